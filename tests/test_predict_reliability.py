"""``cctr predict`` and ``cctr eval`` when things go wrong or nobody watches: a file that is not
a checkpoint is one line; every input is checked before any label map is written; an input far
from the training geometry gets a warning (refused with --strict-geometry); progress lines
reach a log that is not a terminal."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cctr.joint.app.cli import main
from cctr.seg.config import TrainConfig, to_dict
from cctr.seg.data.case import spacing_affine
from cctr.seg.data.nifti import write_nifti
from cctr.seg.geometry_check import geometry_stats, geometry_warnings
from cctr.seg.students import StudentConfig, build_student

SPACING, SHAPE = (8.0, 1.5, 1.5), (4, 40, 48)
CLASSES = ["background", "RV", "MYO", "LV"]


def _checkpoint(path: Path, geometry: dict | None) -> Path:
    cfg = replace(TrainConfig(), image_size=(32, 32), student_a=StudentConfig(kind="unet", widths=(4, 8)))
    torch.manual_seed(0)
    state = build_student(cfg.student_a, len(CLASSES)).state_dict()
    ckpt = {"config": to_dict(cfg), "class_names": CLASSES, "students": {"a": state}, "step": 1}
    if geometry is not None:
        ckpt["geometry"] = geometry
    torch.save(ckpt, path)
    return path


def _volume(path: Path, shape=SHAPE, spacing=SPACING, value: float | None = None) -> Path:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if value is not None:
        image[0, 0, 0] = value
    write_nifti(path, image, spacing_affine(spacing))
    return path


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return _checkpoint(tmp_path / "best.pt", geometry_stats([SPACING, (8.0, 1.6, 1.6)], [SHAPE, (5, 44, 44)]))


def test_geometry_warnings_name_what_is_off():
    stats = geometry_stats([SPACING, (8.0, 1.6, 1.6)], [SHAPE, (5, 44, 44)])
    assert geometry_warnings(stats, SPACING, SHAPE) == []
    assert geometry_warnings(stats, (8.0, 1.55, 1.55), (4, 42, 46)) == []
    resampled = geometry_warnings(stats, (8.0, 0.75, 0.75), (4, 80, 96))  # 2x finer, same field of view
    assert len(resampled) == 2 and "spacing y 0.75 mm is far from training's 1.5-1.6 mm" in resampled[0]
    cropped = geometry_warnings(stats, SPACING, (4, 20, 24))               # a quarter of the field of view
    assert any("field of view y 30 mm" in w for w in cropped)
    assert any("too small" in w for w in geometry_warnings(stats, SPACING, (4, 12, 12)))
    swapped = geometry_warnings(stats, (1.5, 1.5, 8.0), (48, 40, 4))        # (x, y, z) read as (z, y, x)
    assert "are the axes swapped?" in swapped[0]
    with pytest.raises(ValueError):
        geometry_stats([], [])


def test_a_text_file_as_ckpt_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    _volume(tmp_path / "in.nii.gz")
    assert main(["predict", "--ckpt", str(tmp_path / "notes.txt"), "--in", str(tmp_path / "in.nii.gz"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt: a text file, not a checkpoint (it begins 'not a checkpoint')" in err and "KeyError" not in err
    assert "Traceback" not in err
    torch.save({"hello": 1}, tmp_path / "other.pt")
    assert main(["predict", "--ckpt", str(tmp_path / "other.pt"), "--in", str(tmp_path / "in.nii.gz"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "not a cctr segmentation checkpoint" in capsys.readouterr().err


def test_every_input_is_checked_before_any_output_is_written(ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    _volume(inputs / "a_good.nii.gz")
    _volume(inputs / "b_bad.nii.gz", value=np.nan)
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(inputs), "--out", str(tmp_path / "out")]) == 2
    assert "b_bad.nii.gz: image has NaN or inf voxels" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_geometry_far_from_training_warns_or_is_refused(ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    _volume(inputs / "fine.nii.gz")
    _volume(inputs / "fine2x.nii.gz", shape=(4, 80, 96), spacing=(8.0, 0.75, 0.75))
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(inputs), "--out", str(out), "--strict-geometry"]) == 2
    assert "fine2x.nii.gz: unlike the training data: spacing y 0.75 mm" in capsys.readouterr().err
    assert not out.exists()
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(inputs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "cctr: warning: " in err and "fine2x.nii.gz: spacing y 0.75 mm" in err and "fine.nii.gz:" not in err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["fine.nii.gz", "fine2x.nii.gz"]  # + predictions.json


def test_a_checkpoint_without_geometry_predicts_silently(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "old.pt", None)
    _volume(tmp_path / "in" / "tiny.nii.gz", shape=(2, 12, 12), spacing=(1.0, 4.0, 4.0))
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--strict-geometry"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_predict_and_eval_print_progress_lines_off_a_terminal(ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    for name in ("c1", "c2", "c3"):
        _volume(inputs / f"{name}.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(inputs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "predict: volume 1/3 " in err and "predict: volume 3/3 " in err
    assert main(["eval", "--pred", str(out), "--ref", str(out), "--classes", *CLASSES]) == 0
    assert "eval: case 3/3 " in capsys.readouterr().err
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(inputs), "--out", str(out), "--no-progress"]) == 0
    assert "predict:" not in capsys.readouterr().err


def test_predict_never_writes_among_its_inputs_or_into_a_dataset(ckpt, tmp_path, capsys):
    scans = tmp_path / "scans"                       # inputs named without _0000: outputs would take their names
    for name in ("c1", "c2"):
        _volume(scans / f"{name}.nii.gz")
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(scans), *extra]) == 2
        assert "is the folder of the input volumes" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before

    data = tmp_path / "data"                         # a dataset: its ground truth must survive
    (data / "labelsTr").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    write_nifti(data / "labelsTr" / "c1.nii.gz", np.ones(SHAPE, np.uint8), spacing_affine(SPACING))
    truth = (data / "labelsTr" / "c1.nii.gz").read_bytes()
    for out in (data / "labelsTr", data):
        assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(out), "--overwrite"]) == 2
        assert f"is a folder of the dataset {data}" in capsys.readouterr().err
    assert (data / "labelsTr" / "c1.nii.gz").read_bytes() == truth


def test_predict_replaces_only_its_own_label_maps_unless_overwrite(ckpt, tmp_path, capsys):
    scans, out = tmp_path / "scans", tmp_path / "out"
    for name in ("c1", "c2"):
        _volume(scans / f"{name}.nii.gz")
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(out)]) == 0
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(out)]) == 0   # its own: replaced
    capsys.readouterr()
    (out / "c2.nii.gz").unlink()
    (out / "c2.nii.gz").write_text("a file of the user's")
    (out / "predictions.json").unlink()               # no record: nothing there is known to be ours
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "would replace 2 file(s) that cctr did not write there (c1.nii.gz, c2.nii.gz)" in err and "--overwrite" in err
    assert (out / "c2.nii.gz").read_text() == "a file of the user's"
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(scans), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "predictions.json").read_text())["files"] == ["c1.nii.gz", "c2.nii.gz"]
