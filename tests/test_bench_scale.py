"""The scale benchmark's data recipe (scripts/bench_scale.py): the real datasets' counts, splits
and grids, checked on the phantoms' drawn geometry (no voxels rendered), and its disk-usage
helper."""
from __future__ import annotations

import numpy as np
import pytest

from scripts_module import load_script
from cctr.seg.data import phantom, phantom_abdomen


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_scale")


def test_full_size_splits_have_the_real_counts(bench):
    acdc = bench.scale_split([f"patient{i:03d}" for i in range(1, 101)], bench.SCALES["acdc"])
    assert (len(acdc.train), len(acdc.val), len(acdc.test)) == (70, 10, 20)
    assert list(acdc.labeled_sets) == ["7"]
    atlases, targets = 2 * len(acdc.labeled("7")), 2 * len(acdc.unlabeled("7"))  # ED + ES
    assert (atlases, targets, atlases * targets) == (14, 126, 1764)

    synapse = bench.scale_split([f"case{i:04d}" for i in range(1, 31)], bench.SCALES["synapse"])
    assert (len(synapse.train), len(synapse.val), len(synapse.test)) == (18, 0, 12)
    assert list(synapse.labeled_sets) == ["2"] and len(synapse.unlabeled("2")) == 16


def test_smaller_splits_keep_the_proportions_and_refuse_too_few(bench):
    small = bench.scale_split([f"patient{i:03d}" for i in range(1, 11)], bench.SCALES["acdc"], seed=3)
    assert (len(small.train), len(small.val), len(small.test)) == (7, 1, 2)
    assert small.labeled_sets == {"1": small.train[:1]}
    assert bench.scale_split([f"case{i:04d}" for i in range(1, 5)], bench.SCALES["synapse"]).labeled_sets.keys() == {"1"}
    with pytest.raises(ValueError, match="labeled"):
        bench.scale_split([f"patient{i:03d}" for i in range(1, 11)], bench.SCALES["acdc"], labeled=7)
    with pytest.raises(ValueError, match="training"):
        bench.scale_split(["a", "b"], bench.SCALES["synapse"])


def test_acdc_recipe_draws_acdc_grids(bench):
    cfg = bench.acdc_phantom_config()
    drawn = [phantom.draw_anatomy(np.random.default_rng(phantom.patient_seeds(0, n)[0]), cfg) for n in range(1, 101)]
    shapes = np.array([a.shape for a in drawn])
    spacings = np.array([a.spacing for a in drawn])
    assert 6 <= shapes[:, 0].min() and shapes[:, 0].max() <= 18 and 9 <= shapes[:, 0].mean() <= 12
    assert ((spacings[:, 0] >= 5) & (spacings[:, 0] <= 10)).all()
    assert ((spacings[:, 1:] >= 1.37) & (spacings[:, 1:] <= 1.68)).all()
    assert (shapes[:, 1:] >= 154).all() and (shapes[:, 1:] <= 428).all()
    assert 200 <= np.median(shapes[:, 1]) <= 240 and 230 <= np.median(shapes[:, 2]) <= 270
    assert bench.acdc_phantom_config(48).matrix == (48, 48)


def test_synapse_recipe_draws_synapse_grids(bench):
    cfg = bench.synapse_phantom_config()
    drawn = [phantom_abdomen.draw_anatomy(np.random.default_rng(phantom_abdomen.patient_seeds(0, n)[0]), cfg)
             for n in range(1, 31)]
    slices = np.array([a.shape[0] for a in drawn])
    assert all(a.shape[1:] == (512, 512) for a in drawn)
    assert 0.54 <= min(a.spacing[1] for a in drawn) and max(a.spacing[1] for a in drawn) <= 0.98
    assert 2.5 <= min(a.spacing[0] for a in drawn) and max(a.spacing[0] for a in drawn) <= 5.0
    assert 70 <= slices.min() and slices.max() <= 210
    assert abs(slices.sum() - 3779) / 3779 < 0.1  # the 30 Synapse scans' slices
    assert bench.synapse_phantom_config(96).matrix == 96


def test_disk_usage_counts_every_file_below(bench, tmp_path):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "one.npz").write_bytes(b"x" * 5000)
    (tmp_path / "two.npz").write_bytes(b"y" * 10)
    usage = bench.disk_usage(tmp_path)
    assert usage["files"] == 2 and usage["apparent_bytes"] == 5010 and usage["bytes"] >= 4096
    assert bench.disk_usage(tmp_path / "missing") == {"files": 0, "bytes": 0, "apparent_bytes": 0}


def test_sample_pairs_spread_targets_and_turn_atlases(bench):
    pairs = bench.sample_pairs([f"t{i}" for i in range(10)], ["a0", "a1", "a2"], 4)
    assert pairs == [("t0", "a0"), ("t3", "a1"), ("t6", "a2"), ("t9", "a0")]
    assert bench.sample_pairs(["t0", "t1"], ["a0"], 4) == [("t0", "a0"), ("t1", "a0")]
