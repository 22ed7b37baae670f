"""``cctr eval``: pairing predictions with references (a dataset or a plain folder), class names
from the dataset, ``predictions.json`` or ``--classes``, checks, and the files it writes.
That it reproduces ``cctr benchmark``'s scores in every layout: ``test_eval_reproduces_benchmark.py``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.seg.data.case import spacing_affine
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.split import Split, save_split
from cctr.seg.metrics import score_case
from cctr.seg.prediction_info import PREDICTION_INFO, write_prediction_info

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
    """An nnU-Net reference dataset and a folder of predictions for all its cases."""
    ref, pred = tmp_path / "dataset", tmp_path / "pred"
    affine = spacing_affine(SPACING)
    for i, case in enumerate(CASES):
        write_nifti(ref / "imagesTr" / f"{case}_0000.nii.gz", label_map(i).astype(np.float32), affine)
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
    expect_error(["--pred", str(pred), "--ref", str(ref / "labelsTr")], capsys, "--classes")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(["--pred", str(empty), "--ref", str(ref / "labelsTr"), "--classes", *CLASSES], capsys, str(empty),
                 "no NIfTI")
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(ref / "dataset.json"), "missing")


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


def test_class_names_from_the_predictions_checkpoint_metadata(data, tmp_path, capsys):
    ref, pred = data
    (ref / "dataset.json").unlink()
    write_prediction_info(pred, tmp_path / "best.pt", ["bg", "A", "B", "C"], "a", 7)
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref / "labelsTr"), "--out", str(out)]) == 0
    assert [r["class"] for r in read_csv(out / "scores.csv")][:3] == ["A", "B", "C"]
    assert main(["eval", "--pred", str(pred), "--ref", str(ref / "labelsTr"), "--classes", "bg", "A", "B", "C"]) == 0
    expect_error(["--pred", str(pred), "--ref", str(ref / "labelsTr"), "--classes", *CLASSES], capsys,
                 str(pred / PREDICTION_INFO), "drop --classes")


def test_dataset_class_names_come_first(data, tmp_path, capsys):
    ref, pred = data
    write_prediction_info(pred, tmp_path / "best.pt", ["bg", "A", "B", "C"], "a", 7)
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 0
    assert {r["class"] for r in read_csv(out / "scores.csv")} == set(CLASSES[1:])
    err = capsys.readouterr().err
    assert "warning" in err and "['bg', 'A', 'B', 'C']" in err   # the checkpoint disagrees: said, not fatal
    expect_error(["--pred", str(pred), "--ref", str(ref), "--classes", "bg", "A", "B", "C"], capsys,
                 "--classes", "nnunet dataset", "drop --classes")


def test_bad_predictions_json_names_the_file(data, capsys):
    ref, pred = data
    (pred / PREDICTION_INFO).write_text('{"class_names": "RV"}')
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(pred / PREDICTION_INFO), "class_names")


def move_to_test_folders(ref: Path, cases: list[str]) -> None:
    """Move labeled cases to nnU-Net's ``imagesTs/`` and ``labelsTs/``."""
    for sub in ("imagesTs", "labelsTs"):
        (ref / sub).mkdir(exist_ok=True)
    for case in cases:
        (ref / "imagesTr" / f"{case}_0000.nii.gz").rename(ref / "imagesTs" / f"{case}_0000.nii.gz")
        (ref / "labelsTr" / f"{case}.nii.gz").rename(ref / "labelsTs" / f"{case}.nii.gz")


def test_test_labels_in_labels_ts_are_references(data, tmp_path, capsys):
    ref, pred = data
    move_to_test_folders(ref, ["patient002_ED", "patient002_ES"])
    split = save_split(Split(train=("patient001",), val=(), test=("patient002",)), tmp_path / "split.json")
    out = tmp_path / "report"
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--split", str(split), "--out", str(out)]) == 0
    rows = {(r["case"], int(r["class_index"])): float(r["dice"]) for r in read_csv(out / "scores.csv")}
    expected = score_case(label_map(4), label_map(3), SPACING, 4)   # patient002_ES: prediction 4 vs truth 3
    assert {c: rows[("patient002_ES", c)] for c in expected} == {c: s.dice for c, s in expected.items()}

    # an imagesTs case without labelsTs: unlabeled, so a split that tests it is refused by name
    write_nifti(ref / "imagesTs" / "patient003_ED_0000.nii.gz", label_map(0).astype(np.float32), spacing_affine(SPACING))
    meta = json.loads((ref / "dataset.json").read_text())
    meta["patient_of"]["patient003_ED"] = "patient003"
    (ref / "dataset.json").write_text(json.dumps(meta))
    split3 = save_split(Split(train=("patient001",), val=(), test=("patient002", "patient003")), tmp_path / "s3.json")
    expect_error(["--pred", str(pred), "--ref", str(ref), "--split", str(split3)], capsys,
                 str(split3), "patient003_ED", "no reference label")
    write_nifti(pred / "patient003_ED.nii.gz", label_map(0), spacing_affine(SPACING))
    expect_error(["--pred", str(pred), "--ref", str(ref)], capsys, str(pred / "patient003_ED.nii.gz"),
                 "no reference label")


def test_subset_alone_uses_the_dataset_split(data, tmp_path, capsys):
    ref, pred = data
    out = tmp_path / "report"
    expect_error(["--pred", str(pred), "--ref", str(ref), "--subset", "test"], capsys, "--split FILE")
    save_split(Split(train=("patient001",), val=(), test=("patient002",)), ref / "split.json")
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--subset", "test", "--out", str(out)]) == 0
    assert {r["case"] for r in read_csv(out / "scores.csv")} == {"patient002_ED", "patient002_ES"}
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--subset", "train", "--out", str(out)]) == 0
    assert {r["case"] for r in read_csv(out / "scores.csv")} == {"patient001_ED", "patient001_ES"}


def test_unknown_reference_folders_and_a_forced_layout(data, tmp_path, capsys):
    ref, pred = data
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("no labels here")
    expect_error(["--pred", str(pred), "--ref", str(odd)], capsys, str(odd), "neither a folder of reference label maps")
    expect_error(["--pred", str(pred), "--ref", str(tmp_path / "nowhere")], capsys, "reference folder not found")
    expect_error(["--pred", str(pred), "--ref", str(ref), "--layout", "acdc"], capsys, str(ref))
    assert main(["eval", "--pred", str(pred), "--ref", str(ref), "--layout", "nnunet"]) == 0
