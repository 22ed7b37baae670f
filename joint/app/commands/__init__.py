"""One module per ``cctr`` verb; see :mod:`joint.app.cli`."""
