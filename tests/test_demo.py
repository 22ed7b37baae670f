"""``cctr demo`` at tiny scale: the report folder's contents (tables, figures, NIfTI predictions
lined up with the inputs, TensorBoard logs), a re-run that skips every expensive stage, a folder
made with other options refused, and the option order of the command line."""
from __future__ import annotations

import csv
import functools
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from cctr.joint.app import demo, figures, stages
from cctr.joint.app.cli import main
from cctr.joint.app.commands.demo import build_config
from cctr.joint.gate import RegistrationGate
from cctr.seg.config import apply_overrides, load_config
from cctr.seg.data.case import Case, spacing_affine
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.readers import open_dataset

TINY = [
    "patients=4",
    "reg.train.steps=1",
    "reg.train.val_pairs=1",
    "seg.iterations=2",
    "seg.val_every=2",
    "seg.image_size=[32,32]",
    "seg.labeled_batch=2",
    "seg.unlabeled_batch=2",
    "seg.student_a={kind: unet, widths: [4, 8]}",
    "seg.student_b={kind: unet, widths: [4, 8]}",
    "seg.embedding_dim=8",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_cfg() -> demo.DemoConfig:
    return apply_overrides(demo.DemoConfig(), TINY)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_cfg) -> demo.DemoResult:
    # the phantom's size is no option of the demo: a small phantom keeps this run tiny
    small = functools.partial(write_phantom, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "write_phantom", small)
        return demo.run_demo(tiny_cfg, tmp_path_factory.mktemp("demo") / "out", progress=False)


def test_report_holds_the_scores_the_baseline_and_the_registration_guidance(finished):
    text = finished.paths.report.read_text()
    assert "## Test volumes, cctr+ (student A)" in text
    assert "The demo trains `cctr+`" in text and "validation volumes" in text   # it says why
    assert "## Test volumes, supervised (student A)" in text
    assert "## Test volumes, registration-only (learned backend, same atlases)" in text
    # the data's plan is shown, and the registration net was pretrained on the planned grid
    assert "## The data's plan (`cctr plan`)" in text and "registration grid" in text
    from cctr.joint.plan import load_plan
    from cctr.reg.checkpoint import read_checkpoint

    planned = load_plan(finished.paths.data / "cctr_plan.json").reg.grid
    trained = read_checkpoint(finished.paths.reg / "last.pt")["config"]["grid"]
    assert tuple(trained["shape"]) == planned.shape and tuple(trained["spacing"]) == planned.spacing
    for name in ("RV", "MYO", "LV", "**mean**"):
        assert text.count(f"| {name} |") == 3   # the cctr, supervised and registration-only tables
    mean_dice = finished.summary.overall["dice"].mean
    assert f"| **mean** | {mean_dice:.4f} ±" in text
    # the comparison puts the supervised baseline beside cctr on the same test volumes
    sup = finished.supervised
    assert sup is not None and sup.num_cases == finished.summary.num_cases
    sup_row = next(line for line in text.splitlines() if line.startswith("| `supervised` (student A) |"))
    assert f"| {sup.overall['dice'].mean:.4f} ± {sup.overall['dice'].std:.4f} |" in sup_row
    assert any(line.startswith("| `cctr+` (student A) |") and f"| {mean_dice:.4f} ±" in line for line in text.splitlines())
    gain = mean_dice - sup.overall["dice"].mean
    assert f"scores {gain:+.4f} mean Dice against it" in text
    assert "The validation gate (`gate.mode=validation`, gating RSL): the registration scores" in text
    # guidance: one row per backend, learned named relative to the report folder, pairs = 2 targets x 2 atlases
    assert "| `learned:reg/best.pt` | 4 |" in text and "| `identity` | 4 |" in text
    assert set(finished.guidance) == {f"learned:{finished.paths.reg / 'best.pt'}", "identity"}
    assert all(0.0 <= d <= 1.0 for values in finished.guidance.values() for d in values)
    for stage in ("phantom", "registration pretraining", "cctr+ training", "supervised training",
                  "evaluation and report", "suggestion and quality control"):
        assert f"| {stage} |" in text and finished.seconds[stage] >= 0


def test_predictions_line_up_with_the_inputs_and_are_scored_per_class(finished):
    paths = finished.paths
    predictions = sorted(paths.predictions.glob("*.nii.gz"))  # predictions.json sits beside them
    assert [p.name for p in predictions] == ["patient003_ED.nii.gz", "patient003_ES.nii.gz"]
    for pred in predictions:
        src = nib.load(str(paths.data / "imagesTr" / pred.name.replace(".nii.gz", "_0000.nii.gz")))
        got = nib.load(str(pred))
        assert got.shape == src.shape
        np.testing.assert_array_equal(got.affine, src.affine)
        assert np.asarray(got.dataobj).max() < 4
    with open(paths.out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 and {r["class"] for r in rows} == {"RV", "MYO", "LV"}
    assert np.isclose(np.mean([float(r["dice"]) for r in rows]), finished.summary.overall["dice"].mean)
    assert len(list((paths.registration_only / "predictions").glob("*.nii.gz"))) == 2
    assert sorted(p.name for p in paths.baseline_predictions.glob("*.nii.gz")) == [p.name for p in predictions]
    with open(paths.out / "supervised-scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 3
    supervised = torch.load(paths.baseline_seg / "last.pt", map_location="cpu", weights_only=True)
    assert supervised["method"] == "supervised" and sorted(supervised["students"]) == ["a"]
    assert supervised["config"]["iterations"] == 2 and supervised["config"]["seed"] == finished_seed(paths)


def finished_seed(paths) -> int:
    return int(torch.load(paths.seg / "last.pt", map_location="cpu", weights_only=True)["config"]["seed"])


def test_figures_and_tensorboard_logs_are_in_the_folder(finished):
    paths = finished.paths
    for name in ("overlays.png", "curves.png"):
        png = (paths.figures / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert list((paths.reg / "tb").glob("events.out.tfevents.*"))
    scalars = figures.read_scalars(paths.seg / "tb")
    assert {"loss/total", "loss/a/rsl", "val_a/dice"} <= set(scalars)
    steps, _ = scalars["loss/total"]
    assert list(steps) == [1, 2]


def test_a_rerun_skips_every_expensive_stage(finished, tiny_cfg, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("write_phantom",):
        monkeypatch.setattr(demo, name, refuse)
    for name in ("train_registration", "train_joint", "load_students"):
        monkeypatch.setattr(stages, name, refuse)
    for name in ("suggest", "scored_qc"):   # the suggestion and the quality control are kept too
        monkeypatch.setattr(demo, name, refuse)
    before = {k: v for k, v in finished.seconds.items() if k != "evaluation and report"}
    again = demo.run_demo(tiny_cfg, finished.paths.out, progress=False)
    assert again.summary == finished.summary and again.guidance == finished.guidance
    assert {k: v for k, v in again.seconds.items() if k != "evaluation and report"} == before


def test_a_folder_made_with_other_options_is_refused(finished, tiny_cfg, tmp_path):
    other = apply_overrides(tiny_cfg, ["seg.iterations=3"])
    with pytest.raises(ValueError, match=r"other options \(changed: \['seg.iterations'\]\)"):
        demo.run_demo(other, finished.paths.out, progress=False)
    (tmp_path / "stranger.txt").write_text("not a demo")
    with pytest.raises(ValueError, match="holds no demo.yaml"):
        demo.run_demo(tiny_cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="at least 4 phantom patients"):
        demo.run_demo(replace(tiny_cfg, patients=3), tmp_path / "few", progress=False)


def test_command_line_options_apply_in_order(tmp_path):
    yaml_file = tmp_path / "demo.yaml"
    yaml_file.write_text("patients: 9\nseg: {iterations: 50, lr: 0.01}\n")
    cfg = build_config(yaml_file, ["seg.iterations=60", "reg.train.steps=7"], patients=None, seed=3)
    assert (cfg.patients, cfg.seg.iterations, cfg.seg.lr, cfg.reg.train.steps) == (9, 60, 0.01, 7)
    assert (cfg.seed, cfg.seg.seed, cfg.reg.train.seed) == (3, 3, 3)
    assert build_config(None, ["patients=9"], patients=5, seed=None).patients == 5
    assert main(["demo", "--out", str(tmp_path / "bad"), "--set", "seg.oracle.policy=nearest"]) == 2
    assert main(["demo", "--out", str(tmp_path / "bad"), "--threads", "-1"]) == 2
    assert not (tmp_path / "bad").exists()   # refused before anything was written


@pytest.mark.parametrize("gone", ["phantom.matrix=[40,48]", "overlay_rows=3", "student=b", "supervised_baseline=false",
                                  "plan_registration=false"])
def test_options_the_demo_no_longer_has_are_refused_as_unknown(gone):
    # the default phantom, four overlay rows, student A, the supervised baseline and the planned
    # registration front end, always
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(demo.DemoConfig(), [gone])


def test_the_saved_demo_config_round_trips(finished, tiny_cfg):
    assert load_config(finished.paths.config, demo.DemoConfig()) == tiny_cfg


def test_overlay_slices_take_cases_in_turn_with_the_largest_labeled_slices():
    label = np.zeros((4, 6, 6), np.uint8)
    label[2, :4, :4] = 1     # largest
    label[0, :2, :2] = 2     # second
    case = Case("c_ED", "c", np.zeros((4, 6, 6), np.float32), label, (5.0, 1.0, 1.0), spacing_affine((5.0, 1.0, 1.0)),
                (), ("background", "RV", "LV"))
    other = replace(case, case_id="d_ED", patient_id="d", label=np.flip(label, axis=0).copy())
    assert figures.overlay_slices([case, other], 4) == [(0, 2), (1, 1), (0, 0), (1, 3)]


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(figures.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(figures.smooth(np.array([1.0, 3.0]), 1), [1.0, 3.0])


def test_the_validation_panel_shows_the_students_and_the_registration_the_gate_scored():
    gate = RegistrationGate(lambda: 0.6)
    logged = gate.validate(100, {"a": {"dice": 0.7}, "b": {"dice": 0.5}})
    steps = np.array([100, 200])
    seg = {"val_a/dice": (steps, np.array([0.7, 0.8])), "val_b/dice": (steps, np.array([0.5, 0.6])),
           "val_a/dice_RV": (steps, np.array([0.6, 0.7])), "loss/total": (steps, np.array([1.0, 0.5])),
           f"val_{gate.name}/open_a": (steps, np.array([0.0, 0.0]))}
    assert list(figures.validation_series(seg)) == ["student a", "student b"]
    seg.update({f"val_{gate.name}/{key}": (steps, np.array([value, 0.65])) for key, value in logged.items()})
    series = figures.validation_series(seg)
    assert list(series) == ["student a", "student b", figures.REGISTRATION_SERIES]
    np.testing.assert_allclose(series[figures.REGISTRATION_SERIES][1], [0.6, 0.65])


def test_the_gate_sentence_says_when_rsl_closed(tmp_path):
    info = tmp_path / "registration.json"
    info.write_text(json.dumps({"gate": {"mode": "validation", "registration_val_dice": 0.57}}))
    history = [{"step": 100, "gate_open_a": 1.0}, {"step": 200, "gate_open_a": 0.0}, {"step": 300, "gate_open_a": 1.0},
               {"step": 400, "gate_open_a": 0.0}, {"step": 500, "gate_open_a": 0.0}]
    text = demo.gate_text(info, history, "a")
    assert "scores 0.5700 Dice" in text and "passed it at step 400 and trained without RSL from then on" in text
    assert "fell below again" in demo.gate_text(info, history[:3], "a")
    assert "stayed below it" in demo.gate_text(info, history[:1], "a")
    info.write_text(json.dumps({"gate": {"mode": "none", "why": "no validation volumes"}}))
    assert demo.gate_text(info, [], "a") == ("The validation gate was off (no validation volumes): "
                                             "RSL and REPS taught both students throughout.")


def test_the_report_names_the_scan_to_label_next_and_shows_the_qc_column(finished):
    text = finished.paths.report.read_text()
    chosen = finished.suggestion["chosen"]
    assert len(chosen) == 1 and f"**label next: {chosen[0]}**" in text
    # the one unlabeled training patient of the tiny phantom's set '1' is the only candidate
    split = open_dataset(finished.paths.data).default_split
    assert chosen == list(split.unlabeled("1"))
    assert (finished.paths.suggest / "suggest.png").read_bytes().startswith(PNG_MAGIC)
    assert "| volume | Dice | QC: estimated Dice | students' Dice | atlas fit | flag |" in text
    assert set(finished.qc) == {"patient003_ED", "patient003_ES"}
    for case, q in finished.qc.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {case} |"))
        assert f"| {q.estimated_dice:.3f} |" in row
        assert q.estimated_dice == pytest.approx(np.mean([q.students_dice, q.atlas_fit]), abs=1e-5)  # qc.csv keeps 6 digits
    # the lowest 10 % of two volumes is one volume: at least one is flagged for a look
    assert sum(q.flag for q in finished.qc.values()) >= 1
