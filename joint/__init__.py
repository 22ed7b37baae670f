"""cctr.joint: segmentation training that queries registration on the fly (RSL, REPS), and the CLI."""
