"""The dataset plan (issue 16): fingerprint, planned grid / pre-alignment / students, the saved
plan file, the CLI, and that the planned registration works on a geometry the cardiac defaults
were not made for."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from cctr.joint.app.cli import main
from cctr.joint.plan import (PLAN_FILENAME, frontend, load_plan, make_plan, plan_for, reg_config,
                        seg_overrides)
from cctr.reg.backends import load_backend
from cctr.reg.config import RegConfig
from cctr.seg.config import apply_overrides
from cctr.reg.grid import CanonicalGrid
from cctr.reg.placement import place_pair, place_volume
from cctr.reg.plan import DatasetGeometry, PlanRules, extent_to_cover, ncc_window_voxels, plan_registration
from cctr.reg.prealign import PrealignConfig, align_moments
from reg_synthetic import Motion, volume
from cctr.seg.config import TrainConfig
from cctr.seg.data.case import Case
from cctr.seg.data.fingerprint import fingerprint, fingerprint_cases
from cctr.seg.data.phantom_isotropic import IsotropicPhantomConfig, make_patient, write_isotropic_phantom
from cctr.seg.data.readers import open_dataset

SMALL_ISO = IsotropicPhantomConfig(shape=(44, 50), spacing_mm=4.0)  # 176-200 mm a side: larger than the cardiac grid's 141 mm


def covers(grid: CanonicalGrid, extent_mm) -> bool:
    return all(n * s >= e - 1e-6 for n, s, e in zip(grid.shape, grid.spacing, extent_mm))


@pytest.fixture(scope="module")
def iso_dir(tmp_path_factory) -> Path:
    root = write_isotropic_phantom(tmp_path_factory.mktemp("iso") / "iso", patients=6, seed=1, cfg=SMALL_ISO, workers=1)
    # a channel named 'CT' decides the modality by itself; a neutral name leaves it to the values
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "image"}}))
    return root


def test_isotropic_ct_plan_covers_the_field_of_view(iso_dir):
    dataset = open_dataset(iso_dir)
    train = dataset.default_split.train
    plan = make_plan(dataset, train, labeled=train)   # every training patient labeled
    assert plan.labeled == tuple(sorted(train))
    fp = plan.fingerprint
    assert fp.spacing_median == (4.0, 4.0, 4.0) and fp.anisotropy == 1.0
    assert fp.modality == "ct-like" and "below" in fp.modality_reason  # decided from the values, not the name
    assert all(f >= 176.0 for f in fp.fov_median_mm)
    assert fp.roi_mm is not None and all(r <= f + 1e-6 for r, f in zip(fp.roi_mm, fp.fov_median_mm))
    grid = plan.reg.grid
    assert covers(grid, plan.reg.extent_mm) and covers(grid, fp.roi_mm)
    assert math.prod(grid.shape) <= plan.rules.voxel_budget and all(n % 16 == 0 for n in grid.shape)
    assert len(set(grid.spacing)) == 1  # isotropic data, isotropic grid
    assert not covers(CanonicalGrid(), fp.roi_mm)  # the cardiac default would crop the anatomy
    assert plan.reg.prealign.method == "moments" and not plan.reg.thick_slices
    lo, hi = grid.window
    fg = fp.foreground_intensity.percentiles
    assert lo < fg["0.5"] and hi > fg["99.5"] and lo > -1000  # air saturates, organs keep contrast
    assert plan.student.slice_axis == 0 and plan.student.normalization == "clip-zscore"
    assert all(n % 16 == 0 and n <= 64 for n in plan.student.image_size)


def test_thick_slice_stacks_keep_the_cardiac_front_end():
    # cardiac cine-like numbers: ~7 mm slices, 1.4 mm pixels, heart box ~100 x 115 x 130 mm
    geo = DatasetGeometry((7.2, 1.4, 1.4), (92.0, 226.0, 243.0), (97.0, 114.0, 129.0))
    plan = plan_registration(geo)
    assert plan.thick_slices and plan.prealign == PrealignConfig(method="search")
    assert plan.grid.shape == CanonicalGrid().shape and plan.grid.window is None
    assert np.allclose(plan.grid.spacing, CanonicalGrid().spacing, rtol=0.05)
    assert plan.ncc_window == RegConfig().loss.ncc_window
    assert covers(plan.grid, extent_to_cover(geo, PlanRules().margin))
    # a thin-pixel stack with a wide field of view: slice spacing kept, in-plane coarsened to fit
    wide = plan_registration(DatasetGeometry((5.0, 0.7, 0.7), (60.0, 250.0, 250.0)))
    assert wide.grid.spacing[0] == 5.0 and wide.grid.spacing[1] == wide.grid.spacing[2] > 0.7
    assert covers(wide.grid, wide.extent_mm) and math.prod(wide.grid.shape) <= PlanRules().voxel_budget


def test_ncc_window_in_mm_with_enough_voxels():
    assert ncc_window_voxels((7.5, 2.2, 2.2), 15.0) == (3, 7, 7)  # the cardiac window
    assert ncc_window_voxels((1.0, 1.0, 1.0), 15.0) == (15, 15, 15)
    assert ncc_window_voxels((5.0, 5.0, 5.0), 15.0) == (5, 5, 5)  # 3^3 would be 27 noisy samples


def test_modality_from_values():
    def case(modality: str) -> Case:
        # 24 voxels of 8 mm: the whole body in view, air around it
        return make_patient(0, 1, replace(SMALL_ISO, shape=(24, 24), spacing_mm=8.0, modality=modality))

    names = case("CT").class_names
    assert fingerprint_cases([case("CT")], names).modality == "ct-like"
    mr = fingerprint_cases([case("MR")], names)
    assert mr.modality == "mr-like" and mr.intensity.percentiles["0.5"] >= 0


def test_moments_prealignment_recovers_a_known_shift(monkeypatch):
    grid = CanonicalGrid((32, 32, 32), (3.0, 3.0, 3.0))
    shape, spacing = (40, 40, 40), (2.5, 2.5, 2.5)
    shift = (9.0, -12.0, 15.0)  # mm
    fixed = place_volume(volume(shape, spacing)[0], spacing, grid)
    moving = place_volume(volume(shape, spacing, Motion(shift_mm=shift))[0], spacing, grid)
    m = align_moments(fixed.image, moving.image, grid.spacing, PrealignConfig(method="moments"))
    assert np.allclose(m[:3, 3] * np.asarray(grid.spacing), shift, atol=1.0)
    assert np.allclose(m[:3, :3], np.eye(3))
    import cctr.reg.prealign
    monkeypatch.setattr(cctr.reg.prealign, "MAX_SHIFT_MM", 5.0)   # a shift longer than the cap is shortened to it
    capped = align_moments(fixed.image, moving.image, grid.spacing, PrealignConfig(method="moments"))
    assert np.linalg.norm(capped[:3, 3] * np.asarray(grid.spacing)) == pytest.approx(5.0)
    monkeypatch.undo()
    # after re-placing, the moving canonical image lies on the fixed one
    placed = place_pair(fixed, moving, grid, PrealignConfig(method="moments"))
    before = np.abs(fixed.image - moving.image).mean()
    assert np.abs(fixed.image - placed.image).mean() < 0.5 * before


def _pair_dice(backend, cases, num_classes: int) -> float:
    scores = []
    for f, m in [(cases[0], cases[1]), (cases[1], cases[2]), (cases[2], cases[0])]:
        field = backend.register(f.image, f.spacing, m.image, m.spacing)
        warped = field.warp_labels(m.label, num_classes)
        for c in range(1, num_classes):
            a, b = warped == c, f.label == c
            scores.append(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    return float(np.mean(scores))


def test_planned_registration_beats_identity_on_isotropic_volumes(iso_dir, tmp_path):
    from cctr.reg.train import Volume, train

    dataset = open_dataset(iso_dir)
    rules = PlanRules(voxel_budget=16 * 16 * 32)  # tiny grid: seconds
    config = reg_config(make_plan(dataset, None, labeled=dataset.patient_ids, rules=rules))
    config = config.with_overrides(steps=40, val_every=40, val_pairs=2, batch_size=2)
    cases = [r.load() for r in dataset.refs]
    vols = [Volume(c.case_id, c.patient_id, c.image, c.spacing, c.label) for c in cases]
    ckpt = train(config, vols[:4], vols[4:], len(dataset.class_names), tmp_path / "reg")
    learned = _pair_dice(load_backend(f"learned:{ckpt}"), cases[:3], len(dataset.class_names))
    identity = _pair_dice(load_backend("identity"), cases[:3], len(dataset.class_names))
    assert learned > identity + 0.05, (learned, identity)


def test_plan_file_is_reused_and_remeasured_when_the_patients_change(iso_dir, monkeypatch):
    dataset = open_dataset(iso_dir)
    split = dataset.default_split
    (iso_dir / PLAN_FILENAME).unlink(missing_ok=True)
    first = plan_for(dataset, split, "1")
    assert (iso_dir / PLAN_FILENAME).is_file() and load_plan(iso_dir / PLAN_FILENAME) == first
    assert first.labeled == split.labeled("1") and first.fingerprint.labeled == 1

    def boom(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr("cctr.joint.plan.fingerprint", boom)
    assert plan_for(dataset, split, "1") == first
    with pytest.raises(AssertionError):
        plan_for(dataset, None, None)  # every patient, not the split's training ones: measured again
    with pytest.raises(AssertionError):
        plan_for(dataset, split, "3")  # the labels of another labeled set: measured again
    with pytest.raises(AssertionError):
        plan_for(dataset, split, None)  # no label at all: measured again


def test_overrides_for_registration_and_students(iso_dir):
    dataset = open_dataset(iso_dir)
    plan = plan_for(dataset, dataset.default_split, "1")
    config = reg_config(plan)
    assert config.grid == plan.reg.grid and config.prealign == plan.reg.prealign
    assert config.net == RegConfig().net and config.train == RegConfig().train
    changed = apply_overrides(config, ["grid.shape=[16,32,32]", "prealign.method=none", "loss.smoothness_weight=1"])
    assert changed.grid.shape == (16, 32, 32) and changed.grid.spacing == config.grid.spacing
    assert changed.prealign.method == "none" and changed.loss.smoothness_weight == 1
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(config, ["gird.shape=[16,16,16]"])
    seg = replace(TrainConfig(), **seg_overrides(plan))  # CT-like: clipped to the planned window, then z-scored
    assert seg.image_size == plan.student.image_size == (64, 64) and seg.normalization == "clip-zscore"
    assert seg.intensity_window == tuple(plan.student.window) and seg.intensity_window[0] < seg.intensity_window[1]
    assert set(seg_overrides(plan)) == {"image_size", "normalization", "intensity_window"}   # students only
    # the classical backends of a run register on the planned grid and pre-alignment
    front = frontend(plan)
    assert (front.grid, front.prealign) == (plan.reg.grid, plan.reg.prealign)


def test_cli_plan_and_reg_train_use_the_plan(iso_dir, tmp_path, capsys):
    assert main(["plan", str(iso_dir), "--force"]) == 0
    out = capsys.readouterr().out
    assert "registration grid" in out and "moments" in out and PLAN_FILENAME in out
    plan = load_plan(iso_dir / PLAN_FILENAME)
    run = tmp_path / "run"
    assert main(["reg", "train", "--data", str(iso_dir), "--out", str(run), "--steps", "2",
                 "--set", "train.val_every=2", "--set", "grid.shape=[16,32,32]"]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["grid"]["shape"] == [16, 32, 32]  # the override, recorded
    assert stored["grid"]["spacing"] == list(plan.reg.grid.spacing) and stored["prealign"]["method"] == "moments"
    origin = json.loads((run / "config_origin.json").read_text())
    assert origin["source"].startswith("plan") and "grid.shape=[16,32,32]" in origin["overrides"]
    split = open_dataset(iso_dir).default_split
    assert load_plan(iso_dir / PLAN_FILENAME).labeled == split.labeled("1")   # the default labeled set
    # --labeled: the plan reads that set's labels
    assert main(["reg", "train", "--data", str(iso_dir), "--out", str(tmp_path / "run3"), "--steps", "2",
                 "--labeled", "3", "--set", "train.val_every=2", "--set", "grid.shape=[16,32,32]"]) == 0
    assert load_plan(iso_dir / PLAN_FILENAME).labeled == tuple(sorted(split.labeled("3")))
    assert main(["data", "summary", str(iso_dir)]) == 0
    assert "pre-alignment:" in capsys.readouterr().out
    assert load_plan(iso_dir / PLAN_FILENAME).labeled == split.labeled("1")


def test_fingerprint_reads_every_case_once(iso_dir, monkeypatch):
    dataset = open_dataset(iso_dir)
    loads = []
    refs = tuple(replace(r, loader=(lambda r=r: loads.append(r.case_id) or r.loader())) for r in dataset.refs)
    fp = fingerprint(replace(dataset, refs=refs))
    assert sorted(loads) == sorted(dataset.case_ids) and fp.cases == len(dataset.refs)
