"""Registration pretraining with ``loss.dice_weight > 0``: every batch's first pair is two
labeled volumes (the ED/ES frames of a single labeled patient count), the rest unchanged."""
from __future__ import annotations

import numpy as np

from cctr.reg.train import Volume, labeled_pairs_first, sample_pairs


def _volumes() -> list[Volume]:
    img = np.zeros((2, 4, 4), np.float32)
    lab = np.zeros((2, 4, 4), np.uint8)
    out = [Volume(f"p0_{f}", "p0", img, (1.0, 1.0, 1.0), lab) for f in ("ED", "ES")]  # the one labeled patient
    out += [Volume(f"p{p}_{f}", f"p{p}", img, (1.0, 1.0, 1.0)) for p in range(1, 9) for f in ("ED", "ES")]
    return out


def test_the_labeled_ed_es_pair_leads_every_batch():
    volumes = _volumes()
    rng = np.random.default_rng(0)
    firsts = []
    for _ in range(20):
        pairs = labeled_pairs_first(rng, volumes, sample_pairs(rng, volumes, 2, 0.25))
        assert len(pairs) == 2
        firsts.append(pairs[0])
    assert set(firsts) == {(0, 1), (1, 0)}  # ED -> ES and ES -> ED, both directions drawn
    # without it, two labeled volumes meet in under 5 % of pairs
    plain = sample_pairs(np.random.default_rng(0), volumes, 2000, 0.25)
    assert np.mean([a < 2 and b < 2 for a, b in plain]) < 0.05


def test_nothing_changes_with_fewer_than_two_labeled_volumes():
    volumes = [Volume(v.case_id, v.patient_id, v.image, v.spacing) for v in _volumes()]
    pairs = [(2, 5), (7, 3)]
    assert labeled_pairs_first(np.random.default_rng(0), volumes, pairs) == pairs
