"""cctr.seg: cases and their readers, the two cross-teaching students, their losses and 3D evaluation."""
