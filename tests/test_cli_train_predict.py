"""``cctr train`` and ``cctr predict`` end to end on a tiny nnU-Net folder: the label maps have
the input's shape, affine and header; bad input is a one-line error."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cctr.joint.app.cli import main
from layouts import write_nnunet
from cctr.joint.methods import JointConfig
from cctr.seg.config import load_config

CASES = tuple(f"patient00{i}_{f}" for i in range(1, 6) for f in ("ED", "ES"))
SPLIT = {"train": ["patient001", "patient002", "patient003"], "val": ["patient004"], "test": ["patient005"],
         "labeled_sets": {"1": ["patient001"]}}
TINY = ["--set", "image_size=[32,64]", "--set", "labeled_batch=2", "--set", "unlabeled_batch=2",
        "--set", "student_a.widths=[4,8]", "--set", "iterations=2", "--set", "val_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    write_nnunet(data, labeled=CASES, shape=(3, 24, 28), spacing=(8.0, 1.5, 1.25), split=SPLIT)
    run = root / "run"
    code = main(["train", "--data", str(data), "--labeled", "1", "--method", "ct", "--out", str(run),
                 "--no-progress", *TINY])
    assert code == 0
    return data, run


def test_train_writes_a_run_folder_with_the_command_line_config(trained):
    _, run = trained
    cfg = load_config(run / "config.yaml", JointConfig())
    assert isinstance(cfg, JointConfig) and cfg.oracle.backend == ""
    assert cfg.method == "ct" and cfg.labeled == "1" and cfg.out_dir == str(run)
    assert cfg.image_size == (32, 64) and cfg.student_a.widths == (4, 8) and cfg.iterations == 2
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()


def test_predict_folder_writes_label_maps_with_the_inputs_geometry(trained, tmp_path):
    data, run = trained
    out = tmp_path / "pred"
    assert main(["predict", "--ckpt", str(run), "--in", str(data / "imagesTr"), "--out", str(out), "--student", "b"]) == 0
    # predictions.json names the checkpoint and classes for `cctr eval` (seg.prediction_info)
    # ... and qc.csv the estimated Dice of each map (a two-student checkpoint: quality control is on)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{c}.nii.gz" for c in CASES), "predictions.json",
                                                            "qc.csv"])
    for case in CASES:
        src = nib.load(str(data / "imagesTr" / f"{case}_0000.nii.gz"))
        got = nib.load(str(out / f"{case}.nii.gz"))
        assert got.shape == src.shape
        np.testing.assert_array_equal(got.affine, src.affine)
        np.testing.assert_array_equal(got.header.get_zooms(), src.header.get_zooms())
        values = np.asarray(got.dataobj)
        assert values.dtype == np.uint8 and values.max() < 4


def test_predict_one_file_with_a_checkpoint_path(trained, tmp_path):
    data, run = trained
    src = data / "imagesTr" / "patient005_ES_0000.nii.gz"
    assert main(["predict", "--ckpt", str(run / "last.pt"), "--in", str(src), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient005_ES.nii.gz", "predictions.json", "qc.csv"]


def test_bad_input_is_a_one_line_error(trained, tmp_path, capsys):
    data, run = trained
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--ckpt", str(run), "--in", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no .nii or .nii.gz files" in capsys.readouterr().err
    assert main(["predict", "--ckpt", str(run), "--in", str(data), "--out", str(tmp_path / "o"), "--student", "a"]) == 2
    assert main(["predict", "--ckpt", str(tmp_path / "none.pt"), "--in", str(data / "imagesTr"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(run), "--set", "iterations=2"]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--set", "no_such_option=1"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_train_runs_the_registration_methods_from_the_same_cli(trained, tmp_path, capsys):
    data, _ = trained
    atlas = tmp_path / "atlas"
    assert main(["train", "--data", str(data), "--method", "registration-only", "--reg-backend", "identity",
                 "--out", str(atlas), "--no-progress"]) == 0
    assert sorted(p.name for p in (atlas / "predictions").iterdir()) == ["patient005_ED.nii.gz", "patient005_ES.nii.gz"]
    assert "registration-only (identity" in (atlas / "summary.md").read_text()
    assert load_config(atlas / "config.yaml", JointConfig()).oracle.backend == "identity"

    assert main(["train", "--data", str(data), "--method", "cctr", "--out", str(tmp_path / "c"), *TINY]) == 2
    assert "needs a registration backend" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--method", "cctr", "--reg-backend", "nope", "--out",
                 str(tmp_path / "d"), *TINY]) == 2
    assert "unknown registration backend 'nope'" in capsys.readouterr().err
