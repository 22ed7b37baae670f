"""Quality control: the estimated Dice (students' agreement, atlas fit, their mean), the flag
(threshold or the batch's lowest share), its check against the true Dice (Spearman, precision),
``cctr predict`` writing it into ``predictions.json`` and ``qc.csv``, and ``cctr eval`` reporting
how well it ranks the true Dice."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.joint.qc import (QCConfig, ScanQC, assess, check_qc, estimated_dice, lowest, qc_from_json, qc_to_json,
                           read_qc_csv, spearman, write_qc_csv)
from cctr.joint.scan_evidence import ScanEvidence
from cctr.seg.data.nifti import read_nifti, write_nifti
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.case import CaseError
from cctr.seg.metrics import mean_foreground_dice, score_case
from cctr.seg.prediction_info import read_prediction_info

TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}",
        "--set", "student_b={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]


def ev(case: str, agree, fit) -> ScanEvidence:
    return ScanEvidence(case, case, agree, fit, None, {})


def test_mean_foreground_dice_is_score_cases_dice():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (3, 9, 8)).astype(np.uint8), rng.integers(0, 4, (3, 9, 8)).astype(np.uint8)
    b[b == 3] = 0   # class 3 only in a: Dice 0
    expected = np.mean([s.dice for s in score_case(a, b, (1.0, 1.0, 1.0), 4).values()])
    assert mean_foreground_dice(a, b, 4) == pytest.approx(expected)
    assert mean_foreground_dice(np.zeros_like(a), np.zeros_like(a), 4) == 1.0   # both empty: agreement


def test_the_estimate_is_the_mean_of_the_signals_there_are():
    assert estimated_dice(0.8, 0.6) == pytest.approx(0.7)
    assert estimated_dice(0.8, None) == 0.8 and estimated_dice(None, 0.5) == 0.5
    assert estimated_dice(None, None) is None


def test_the_flag_takes_the_batchs_lowest_share_and_everything_below_the_threshold():
    assert lowest({"a": 0.5, "b": 0.1, "c": 0.9}, 0.1) == {"b"}          # at least one scan
    assert lowest({f"s{i}": i / 20 for i in range(20)}, 0.1) == {"s0", "s1"}
    assert lowest({"a": 0.3, "b": 0.3}, 0.5) == {"a"}                     # ties: by name
    assert lowest({"a": 0.3}, 0.0) == set()
    batch = {f"s{i}": ev(f"s{i}", 0.95 - i / 100, 0.9 - i / 100) for i in range(10)}
    batch["bad"] = ev("bad", 0.6, 0.5)
    qc = assess(batch, QCConfig(threshold=0.7, fraction=0.1))
    # 11 scans: the 2 lowest (bad, s9), and every estimate below 0.7 (bad only)
    assert {c for c, q in qc.items() if q.flag} == {"bad", "s9"}
    assert qc["bad"].estimated_dice == pytest.approx(0.55) and qc["s0"].atlas_fit == 0.9
    assert {c for c, q in assess(batch, QCConfig(threshold=0.9, fraction=0.0)).items() if q.flag} == \
        {c for c, q in qc.items() if q.estimated_dice < 0.9}
    assert assess({"x": ev("x", None, None)}) == {}   # one student and no registration: nothing to estimate
    with pytest.raises(ValueError, match="lie in"):
        QCConfig(threshold=1.5)


def test_the_check_measures_rank_correlation_and_the_flags_precision():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [1, 2])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    truth = {f"s{i}": i / 10 for i in range(10)}                        # s0 is the worst
    estimate = {f"s{i}": i / 10 for i in range(10)}
    estimate["s0"], estimate["s5"] = 0.45, 0.0                          # the estimate swaps s0 and s5
    qc = {c: ScanQC(c, v, v, None, c in ("s5", "s0", "s1")) for c, v in estimate.items()}
    check = check_qc(qc, truth)
    assert (check.scans, check.worst, check.flagged) == (10, 1, 3)
    assert check.flag_precision == pytest.approx(1 / 3) and check.flag_recall == 1.0
    assert check.lowest_precision == 0.0                                # the lowest estimate (s5) is not the worst
    assert check.spearman == pytest.approx(spearman(list(estimate.values()), list(truth.values())))
    with pytest.raises(ValueError, match="no scan"):
        check_qc(qc, {"other": 0.5})


def test_qc_round_trips_through_its_csv_and_json(tmp_path):
    qc = {"b": ScanQC("b", 0.4, 0.5, 0.3, True), "a": ScanQC("a", 0.9, 0.9, None, False)}
    write_qc_csv(tmp_path / "qc.csv", qc)
    with open(tmp_path / "qc.csv", newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["b", "a"]   # lowest estimate first
    assert read_qc_csv(tmp_path / "qc.csv") == qc
    assert qc_from_json(json.loads(json.dumps(qc_to_json(qc))), "x") == qc
    with pytest.raises(CaseError, match="x: qc entry of 'a' is malformed"):
        qc_from_json({"a": {"students_dice": 0.3}}, "x")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 5-patient phantom and a tiny two-student run on it (registration: identity)."""
    root = tmp_path_factory.mktemp("qc")
    data = write_phantom(root / "data", 5, seed=1, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    run = root / "run"
    assert main(["train", "--data", str(data), "--method", "cctr", "--reg-backend", "identity", "--out", str(run),
                 "--no-progress", *TINY]) == 0
    return data, run


def test_predict_writes_the_estimate_and_the_flag_of_every_scan(trained, tmp_path, capsys):
    data, run = trained
    images = data / "imagesTr"
    out, only_b = tmp_path / "pred", tmp_path / "b"
    assert main(["predict", "--ckpt", str(run), "--in", str(images), "--out", str(out), "--qc-data", str(data),
                 "--no-progress"]) == 0
    assert "scan(s) to check" in capsys.readouterr().out
    assert main(["predict", "--ckpt", str(run), "--in", str(images), "--out", str(only_b), "--student", "b",
                 "--no-qc", "--no-progress"]) == 0
    info = read_prediction_info(out)
    qc = qc_from_json(info.qc, "predictions.json")
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in images.iterdir())
    assert sorted(qc) == names
    in_csv = read_qc_csv(out / "qc.csv")
    assert set(in_csv) == set(names)
    assert all(in_csv[c].flag == qc[c].flag and in_csv[c].estimated_dice == pytest.approx(qc[c].estimated_dice, abs=1e-6)
               for c in names)
    assert read_prediction_info(only_b).qc == {}          # --no-qc: no estimate
    assert not (only_b / "qc.csv").exists()
    for name in names:
        a = read_nifti(out / f"{name}.nii.gz")[0].astype(np.uint8)
        b = read_nifti(only_b / f"{name}.nii.gz")[0].astype(np.uint8)
        # the students' agreement is the Dice between the two students' written maps
        assert qc[name].students_dice == pytest.approx(mean_foreground_dice(a, b, 4))
        assert 0.0 <= qc[name].atlas_fit <= 1.0
        assert qc[name].estimated_dice == pytest.approx((qc[name].students_dice + qc[name].atlas_fit) / 2)
    flagged = {c for c, q in qc.items() if q.flag}
    estimates = {c: q.estimated_dice for c, q in qc.items()}
    assert flagged == lowest(estimates, 0.1) | {c for c, v in estimates.items() if v < 0.7}


def test_a_constant_scan_is_always_flagged_and_qc_without_registration_is_the_agreement(trained, tmp_path):
    data, run = trained
    inputs = tmp_path / "in"
    image, spacing, affine, _ = read_nifti(data / "imagesTr" / "patient001_ED_0000.nii.gz")
    write_nifti(inputs / "scan_0000.nii.gz", image, affine)
    write_nifti(inputs / "flat_0000.nii.gz", np.full_like(image, 3.0), affine)
    out = tmp_path / "pred"
    assert main(["predict", "--ckpt", str(run), "--in", str(inputs), "--out", str(out), "--no-progress"]) == 0
    qc = read_qc_csv(out / "qc.csv")
    assert qc["flat"].estimated_dice == 0.0 and qc["flat"].flag
    assert qc["scan"].atlas_fit is None and qc["scan"].estimated_dice == qc["scan"].students_dice


def test_eval_reports_how_well_the_estimate_ranks_the_true_dice(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "pred"
    assert main(["predict", "--ckpt", str(run), "--in", str(data / "imagesTr"), "--out", str(out), "--no-progress"]) == 0
    assert main(["eval", "--pred", str(out), "--ref", str(data)]) == 0
    printed = capsys.readouterr().out
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = {c: float(np.mean([float(r["dice"]) for r in rows if r["case"] == c])) for c in {r["case"] for r in rows}}
    qc = read_qc_csv(out / "qc.csv")
    check = check_qc(qc, truth)
    summary = (out / "summary.md").read_text()
    assert "## Quality control: the estimated Dice against the true Dice" in summary
    row = f"| {check.scans} | {check.spearman:.3f} | {check.worst} | {check.flagged} |"
    assert row in summary and row in printed
    # predictions without an estimate: no such section
    (out / "predictions.json").write_text(json.dumps({**json.loads((out / "predictions.json").read_text()), "qc": {}}))
    assert main(["eval", "--pred", str(out), "--ref", str(data)]) == 0
    assert "Quality control" not in (out / "summary.md").read_text()


def test_predict_keeps_a_qc_csv_it_did_not_write(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "pred"
    out.mkdir()
    (out / "qc.csv").write_text("mine")
    assert main(["predict", "--ckpt", str(run), "--in", str(data / "imagesTr"), "--out", str(out),
                 "--no-progress"]) == 2
    assert "qc.csv" in capsys.readouterr().err and (out / "qc.csv").read_text() == "mine"
    assert main(["predict", "--ckpt", str(run), "--in", str(data / "imagesTr"), "--out", str(tmp_path / "x"),
                 "--qc-data", str(data), "--reg-backend", "elastix", "--no-progress"]) == 2
    assert "unknown registration backend 'elastix'" in capsys.readouterr().err
    assert main(["predict", "--ckpt", str(run), "--in", str(data / "imagesTr"), "--out", str(tmp_path / "y"),
                 "--reg-backend", "identity", "--no-progress"]) == 2
    assert "give --qc-data" in capsys.readouterr().err
