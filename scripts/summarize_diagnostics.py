"""Moved to ``cctr inspect diagnostics`` (:mod:`joint.app.run_diagnostics`).

Left only because ``scripts/compare_arms.py`` imports ``VAL`` and ``scalars`` from here; once
it imports them from :mod:`cctr.joint.app.run_diagnostics`, delete this file.
"""
from cctr.joint.app.run_diagnostics import VAL  # noqa: F401
from cctr.joint.app.run_diagnostics import run_scalars as scalars  # noqa: F401
