"""``cctr eval``: pairing predictions with references, checks, and the files it writes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from joint.app.cli import main
from seg.data.case import spacing_affine
from seg.data.nifti import write_nifti
from seg.data.split import Split, save_split
from seg.metrics import score_case

SPACING = (8.0, 1.5, 1.25)
SHAPE = (4, 16, 18)
CLASSES = ["background", "RV", "MYO", "LV"]
CASES = ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]


def label_map(seed: int) -> np.ndarray:
    """A (Z, Y, X) label map with three nested structures, shifted by the seed."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    r = np.hypot(yy - 8 - seed % 3, xx - 9 + seed % 2)
    out = np.zeros(SHAPE, np.uint8)
    out[r < 6] = 2
    out[r < 4] = 3
    out[(r >= 6) & (r < 8) & (xx > 9)] = 1
    out[0] = 0
    return out


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    """An nnU-Net style reference dataset and a folder of predictions for all its cases."""
    ref, pred = tmp_path / "dataset", tmp_path / "pred"
    affine = spacing_affine(SPACING)
    for i, case in enumerate(CASES):
        write_nifti(ref / "labelsTr" / f"{case}.nii.gz", label_map(i), affine)
        write_nifti(pred / f"{case}.nii.gz", label_map(i + 1), affine)
    meta = {
        "labels": {name: i for i, name in enumerate(CLASSES)},
        "patient_of": {case: case.split("_")[0] for case in CASES},
        "file_ending": ".nii.gz",
    }
    (ref / "dataset.json").write_text(json.dumps(meta))
    return ref, pred


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_scores_every_prediction_and_writes_csv_and_summary(data, tmp_path, capsys):
    ref, pred = data
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 0
    rows = read_csv(out / "scores.csv")
    assert [(r["case"], r["class"]) for r in rows] == [(c, n) for c in CASES for n in CLASSES[1:]]
    expected = score_case(label_map(2), label_map(1), SPACING, 4)
    got = {int(r["class_index"]): r for r in rows if r["case"] == CASES[1]}
    for c, s in expected.items():
        assert float(got[c]["dice"]) == pytest.approx(s.dice)
        assert float(got[c]["hd95_mm"]) == pytest.approx(s.hd95)
        assert float(got[c]["asd_mm"]) == pytest.approx(s.asd)
    summary = (out / "summary.md").read_text()
    assert "4 case(s)" in summary and "| MYO |" in summary and "| **mean** |" in summary
    assert summary in capsys.readouterr().out


def test_labels_folder_with_explicit_classes_and_default_out(data):
    ref, pred = data
    (ref / "dataset.json").unlink()
    assert main(["eval", "--pred", str(pred), "--ref", str(ref / "labelsTr"), "--classes", *CLASSES]) == 0
    assert {r["class"] for r in read_csv(pred / "scores.csv")} == {"RV", "MYO", "LV"}
    assert (pred / "summary.md").is_file()


def test_split_scores_exactly_the_subset_patients(data, tmp_path):
    ref, pred = data
    split = save_split(Split(train=("patient001",), val=(), test=("patient002",)), tmp_path / "split.json")
    (pred / f"{CASES[0]}.nii.gz").unlink()  # a train case: not needed for the test subset
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--split", str(split), "--out", str(out)]) == 0
    assert {r["case"] for r in read_csv(out / "scores.csv")} == {"patient002_ED", "patient002_ES"}


def test_split_case_without_prediction_is_an_error(data, tmp_path, capsys):
    ref, pred = data
    split = save_split(Split(train=("patient001",), val=(), test=("patient002",)), tmp_path / "split.json")
    (pred / "patient002_ES.nii.gz").unlink()
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--split", str(split)]) == 2
    assert "patient002_ES" in capsys.readouterr().err
    assert not (pred / "scores.csv").exists()


def expect_error(args: list[str], capsys, *fragments: str) -> None:
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_shape_mismatch_names_the_file_and_writes_nothing(data, capsys):
    ref, pred = data
    bad = pred / f"{CASES[2]}.nii.gz"
    write_nifti(bad, np.zeros((4, 16, 17), np.uint8), spacing_affine(SPACING))
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(bad), "shape")
    assert not (pred / "scores.csv").exists() and not (pred / "summary.md").exists()


def test_affine_mismatch_names_the_file(data, capsys):
    ref, pred = data
    bad = pred / f"{CASES[3]}.nii.gz"
    shifted = spacing_affine(SPACING)
    shifted[0, 3] = 5.0
    write_nifti(bad, label_map(0), shifted)
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(bad), "affine")


def test_prediction_without_reference_is_an_error(data, capsys):
    ref, pred = data
    write_nifti(pred / "patient003_ED.nii.gz", label_map(0), spacing_affine(SPACING))
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, "patient003_ED.nii.gz", "no reference")


def test_labels_outside_the_classes_name_the_file(data, capsys):
    ref, pred = data
    bad = pred / f"{CASES[0]}.nii.gz"
    write_nifti(bad, np.full(SHAPE, 7, np.uint8), spacing_affine(SPACING))
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(bad), "[7]")


def test_missing_class_names_and_empty_prediction_folder_are_errors(data, tmp_path, capsys):
    ref, pred = data
    (ref / "dataset.json").unlink()
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, "--classes")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(["--pred", str(empty), "--ref", str(ref), "--classes", *CLASSES], capsys, str(empty), "no NIfTI")


def test_empty_policy_option_reaches_the_scores(data, tmp_path):
    ref, pred = data
    for case in CASES:  # no RV predicted anywhere
        path = pred / f"{case}.nii.gz"
        labels = label_map(0)
        labels[labels == 1] = 0
        write_nifti(path, labels, spacing_affine(SPACING))
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--out", str(out), "--empty-policy", "ssl4mis"]) == 0
    rv = [r for r in read_csv(out / "scores.csv") if r["class"] == "RV"]
    assert {(r["dice"], r["hd95_mm"], r["asd_mm"]) for r in rv} == {("0.0", "50.0", "10.0")}
    assert "empty masks: ssl4mis" in (out / "summary.md").read_text()


def test_split_subset_that_is_empty_or_lacks_references_is_an_error(data, tmp_path, capsys):
    ref, pred = data
    split = save_split(Split(train=("patient001", "patient002"), val=(), test=("patient009",)), tmp_path / "s.json")
    expect_error(["--pred", str(pred), "--ref", str(ref), "--split", str(split)], capsys, "patient009", "no reference")
    expect_error(["--pred", str(pred), "--ref", str(ref), "--split", str(split), "--subset", "val"], capsys, "'val'")
