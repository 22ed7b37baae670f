"""No command replaces or deletes a file it did not write, unless the user says ``--overwrite``:
the one refusal every writing command raises before it writes anything.

What a command wrote is its own record (``predictions.json`` lists the label maps of
``cctr predict``, a phantom folder lists its files); anything else in its way is the user's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from cctr.seg.data.case import CaseError

SHOWN = 3   # names listed in the refusal; the rest are counted


class WouldOverwriteError(CaseError):
    """Writing would replace or delete files the command did not write (exit status 2)."""


def refuse_foreign(folder: Path, foreign: Iterable[Path | str], action: str = "replace",
                   where: str = "--out") -> None:
    """Raise :class:`WouldOverwriteError` naming ``folder`` and the first ``foreign`` files
    (paths relative to it) when there are any; ``action`` says what would happen to them."""
    names = sorted(str(f) for f in foreign)
    if not names:
        return
    shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
    kinds = "file(s) and folder(s)" if any(n.endswith("/") for n in names) else "file(s)"
    raise WouldOverwriteError(f"{folder}: would {action} {len(names)} {kinds} that cctr did not write there "
                              f"({shown}); pass --overwrite to {action} them, or choose another {where}")
