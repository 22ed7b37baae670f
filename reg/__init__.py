"""cctr.reg: deformable registration between volume pairs, learned and classical, behind one interface."""
