"""cctr.joint: the registration-guided method (oracle, RSL, REPS, memory bank, methods) on top of
``reg`` and ``seg``; :mod:`joint.app` holds the application (CLI, pipeline stages, demo,
benchmark, figures) and is never imported by the method modules."""
