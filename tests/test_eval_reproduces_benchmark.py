"""``cctr eval`` on a ``cctr benchmark`` run's ``predictions/`` reproduces the benchmark's own
per-case, per-class Dice and HD95 exactly, in every dataset layout the readers support:
nnU-Net with labels in ``labelsTr/``, nnU-Net with the test labels in ``labelsTs/``, raw ACDC,
SSL4MIS ``.h5`` and TransUNet Synapse.

One tiny model is trained once, by a real ``cctr benchmark`` on the ``labelsTs`` dataset. The
other layouts run ``cctr benchmark`` too, with that checkpoint already in the run folder: the
benchmark resumes a finished training by skipping it, then predicts and scores the layout's
validation and test cases itself, so every layout goes through the command end to end in
seconds. The benchmark scores validation volumes too, so every layout's split has one.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from cctr.joint.app.benchmark import PREDICTIONS, RESULT_FILE, Run
from cctr.joint.app.cli import main
from layouts import fake_volume, save_nifti_zyx, affine_zyx, write_acdc_raw, write_nnunet, write_ssl4mis, write_synapse
from cctr.seg.prediction_info import PREDICTION_INFO

TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]
# --threads 0: leave the test process's torch threads as they are
BENCHMARK = ["benchmark", "--methods", "supervised", "--labeled", "1", "--draws", "1", "--seeds", "1",
             "--threads", "0", "--no-progress", *TINY]
RUN_FOLDER = Run("supervised", "", "1", 0, 0).folder
NNUNET_CASES = [f"case_{i:03d}" for i in range(6)]
NNUNET_SPLIT = {"train": NNUNET_CASES[:3], "val": NNUNET_CASES[3:4], "test": NNUNET_CASES[4:],
                "labeled_sets": {"1": NNUNET_CASES[:1]}}


def nnunet_labels_tr(root: Path) -> Path:
    # patient_of={}: every case is its own patient (the default would group case_000..case_005)
    return write_nnunet(root, labeled=NNUNET_CASES, patient_of={}, split=NNUNET_SPLIT).root


def nnunet_labels_ts(root: Path) -> Path:
    """The issue's dataset: test cases in ``imagesTs/`` with labels in ``labelsTs/``, and one
    unlabeled ``imagesTs/`` case that no split names."""
    nnunet_labels_tr(root)
    for sub in ("imagesTs", "labelsTs"):
        (root / sub).mkdir()
    for case in NNUNET_SPLIT["test"]:
        (root / "imagesTr" / f"{case}_0000.nii.gz").rename(root / "imagesTs" / f"{case}_0000.nii.gz")
        (root / "labelsTr" / f"{case}.nii.gz").rename(root / "labelsTs" / f"{case}.nii.gz")
    save_nifti_zyx(root / "imagesTs" / "case_099_0000.nii.gz", fake_volume(99)[0], affine_zyx((8.0, 1.5, 1.25)))
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = len(NNUNET_CASES) - len(NNUNET_SPLIT["test"])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def acdc_raw(root: Path) -> Path:
    write_acdc_raw(root, patients=(1, 2, 3, 4))
    split = {"train": ["patient001", "patient002"], "val": ["patient003"], "test": ["patient004"],
             "labeled_sets": {"1": ["patient001"]}}
    (root / "split.json").write_text(json.dumps(split))
    return root


def ssl4mis(root: Path) -> Path:
    # the split comes from the release's list files, labeled set "1" from the head of train.list
    return write_ssl4mis(root, patients=(1, 2, 3, 4), lists={"train": [1, 2], "val": [3], "test": [4]}).root


def synapse(root: Path) -> Path:
    # TransUNet's split has no validation case: the benchmark gets one from --split (SPLIT_ARGS)
    return write_synapse(root, train_cases=(5, 6), test_cases=(1, 2)).root


SYNAPSE_SPLIT = {"train": ["case0005"], "val": ["case0006"], "test": ["case0001", "case0002"],
                 "labeled_sets": {"1": ["case0005"]}}


LAYOUTS: dict[str, Callable[[Path], Path]] = {
    "nnunet-labelsTr": nnunet_labels_tr,
    "nnunet-labelsTs": nnunet_labels_ts,
    "acdc": acdc_raw,
    "acdc-ssl4mis": ssl4mis,
    "synapse": synapse,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """``(dataset, benchmark folder)`` of a real ``cctr benchmark`` on the labelsTs dataset."""
    root = tmp_path_factory.mktemp("labelsTs")
    data, out = nnunet_labels_ts(root / "data"), root / "bench"
    assert main([*BENCHMARK, "--data", str(data), "--out", str(out)]) == 0
    return data, out


def benchmark_on(layout: str, trained: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    """``(dataset, benchmark folder)`` of ``cctr benchmark`` on ``layout``'s tiny dataset."""
    if layout == "nnunet-labelsTs":
        return trained
    data, out = LAYOUTS[layout](root / "data"), root / "bench"
    (out / RUN_FOLDER).mkdir(parents=True)
    shutil.copy(trained[1] / RUN_FOLDER / "last.pt", out / RUN_FOLDER / "last.pt")  # training is done: skipped
    split = []
    if layout == "synapse":
        (root / "split.json").write_text(json.dumps(SYNAPSE_SPLIT))
        split = ["--split", str(root / "split.json")]
    assert main([*BENCHMARK, "--data", str(data), "--out", str(out), *split]) == 0
    return data, out


def eval_scores(report: Path) -> dict[str, dict[int, tuple[float, float, float]]]:
    with open(report / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, dict[int, tuple[float, float, float]]] = {}
    for r in rows:
        out.setdefault(r["case"], {})[int(r["class_index"])] = (float(r["dice"]), float(r["hd95_mm"]), float(r["asd_mm"]))
    return out


def benchmark_scores(run: Path, checkpoint: str = "best") -> dict[str, dict[int, tuple[float, float, float]]]:
    """The benchmark's test scores of ``run`` under the checkpoint rule ``checkpoint``."""
    scores = json.loads((run / RESULT_FILE).read_text())["scores"]["test"][checkpoint]
    return {case: {int(c): (s["dice"], s["hd95"], s["asd"]) for c, s in per.items()} for case, per in scores.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_of_benchmark_predictions_reproduces_its_scores_exactly(layout, trained, tmp_path, capsys):
    data, out = benchmark_on(layout, trained, tmp_path)
    run, report = out / RUN_FOLDER, tmp_path / "eval"
    # --subset alone: the test subset of the dataset's own split, the one the benchmark used
    assert main(["eval", "--pred", str(run / PREDICTIONS), "--ref", str(data), "--subset", "test",
                 "--out", str(report)]) == 0
    expected = benchmark_scores(run)
    assert len(expected) >= 2 and eval_scores(report) == expected   # float equality, not approx
    assert (report / "scores.csv").read_text() == (run / "scores.csv").read_text()
    err = capsys.readouterr().err
    if layout == "synapse":  # the shared checkpoint was trained on ACDC-like classes, not Synapse's 9
        assert "warning" in err and PREDICTION_INFO in err
    else:
        assert "warning" not in err


def test_the_issue_command_on_test_labels_in_labels_ts(trained, tmp_path):
    data, out = trained
    run = out / RUN_FOLDER
    info = json.loads((run / PREDICTIONS / PREDICTION_INFO).read_text())
    assert info["class_names"] == ["background", "RV", "MYO", "LV"] and info["student"] == "a"
    assert Path(info["checkpoint"]).is_file()
    report = tmp_path / "eval"
    assert main(["eval", "--pred", str(run / PREDICTIONS), "--ref", str(data), "--split", str(data / "split.json"),
                 "--subset", "test", "--out", str(report)]) == 0
    assert eval_scores(report) == benchmark_scores(run)
    assert set(eval_scores(report)) == {"case_004", "case_005"}
    # the predictions by last.pt reproduce the benchmark's scores under the 'last' rule
    info = json.loads((run / f"{PREDICTIONS}-last" / PREDICTION_INFO).read_text())
    assert Path(info["checkpoint"]) == run / "last.pt"
    assert main(["eval", "--pred", str(run / f"{PREDICTIONS}-last"), "--ref", str(data), "--subset", "test",
                 "--out", str(tmp_path / "eval-last")]) == 0
    assert eval_scores(tmp_path / "eval-last") == benchmark_scores(run, "last")


def test_cctr_predict_then_eval_against_the_labels_ts_folder(trained, tmp_path):
    """``cctr predict`` on ``imagesTs/`` with the benchmark's checkpoint writes predictions.json,
    so ``cctr eval`` against a plain copy of ``labelsTs/`` needs no --classes, and scores as
    the benchmark did (the label files carry the images' spacing)."""
    data, out = trained
    run, pred = out / RUN_FOLDER, tmp_path / "pred"
    checkpoint = json.loads((run / PREDICTIONS / PREDICTION_INFO).read_text())["checkpoint"]
    assert main(["predict", "--ckpt", checkpoint, "--in", str(data / "imagesTs"), "--out", str(pred),
                 "--no-progress"]) == 0
    info = json.loads((pred / PREDICTION_INFO).read_text())
    assert info["checkpoint"] == checkpoint and info["class_names"][1:] == ["RV", "MYO", "LV"]
    (pred / "case_099.nii.gz").unlink()  # the unlabeled test image: no reference to score it against
    shutil.copytree(data / "labelsTs", tmp_path / "refs")  # a plain folder, no dataset.json near it
    assert main(["eval", "--pred", str(pred), "--ref", str(tmp_path / "refs"), "--out", str(tmp_path / "eval")]) == 0
    assert eval_scores(tmp_path / "eval") == benchmark_scores(run)


def test_the_unlabeled_test_image_is_refused_by_name(trained, tmp_path, capsys):
    data, out = trained
    pred = tmp_path / "pred"
    shutil.copytree(out / RUN_FOLDER / PREDICTIONS, pred)
    shutil.copy(pred / "case_004.nii.gz", pred / "case_099.nii.gz")
    assert main(["eval", "--pred", str(pred), "--ref", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case_099.nii.gz" in err and "no reference label" in err
