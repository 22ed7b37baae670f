"""``cctr reg train`` and ``cctr reg eval`` end to end on a tiny nnU-Net-layout folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.reg.checkpoint import read_checkpoint
from cctr.seg.data.case import spacing_affine
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.split import Split, save_split
from tests.reg_synthetic import Motion, volume, one_torch_thread  # noqa: F401 (autouse)

SPACING = (6.0, 1.6, 1.6)
TINY_CONFIG = """\
grid: {shape: [16, 32, 32], spacing: [4.0, 2.4, 2.4]}
net: {nb_features: [4, 4, 4, 4]}
train: {steps: 2, batch_size: 1, val_every: 2, val_pairs: 2}
"""


def _write_folder(root: Path, patients: int) -> Split:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    patient_of = {}
    for p in range(1, patients + 1):
        pid = f"patient{p:03d}"
        angle, dy = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(-3, 3)
        for frame, extra in (("ED", 0.0), ("ES", 1.5)):
            img, lab = volume((8, 40, 40), SPACING, Motion(angle, (0.0, dy + extra, 0.0)))
            cid = f"{pid}_{frame}"
            write_nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", img, spacing_affine(SPACING))
            write_nifti(root / "labelsTr" / f"{cid}.nii.gz", lab, spacing_affine(SPACING))
            patient_of[cid] = pid
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
        "numTraining": len(patient_of), "file_ending": ".nii.gz", "patient_of": patient_of,
    }))
    ids = sorted(set(patient_of.values()))
    split = Split(train=tuple(ids[:3]), val=tuple(ids[3:-1]), test=tuple(ids[-1:]), labeled_sets={"1": (ids[0],)})
    save_split(split, root / "split.json")
    return split


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    _write_folder(root, 7)
    (root.parent / "tiny.yaml").write_text(TINY_CONFIG)
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reg"
    assert main(["reg", "train", "--data", str(folder), "--out", str(out), "--config", str(folder.parent / "tiny.yaml")]) == 0
    return out


def test_train_writes_a_run_and_resumes(trained, folder, capsys):
    assert (trained / "best.pt").is_file() and (trained / "config.yaml").is_file()
    assert main(["reg", "train", "--data", str(folder), "--out", str(trained), "--config", str(folder.parent / "tiny.yaml")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["reg", "train", "--data", str(folder), "--out", str(trained), "--resume", "--steps", "3"]) == 0
    assert read_checkpoint(trained / "last.pt")["step"] == 3


def test_eval_compares_backends_in_one_table(trained, folder, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["reg", "eval", "--data", str(folder), "--split", str(folder / "split.json"), "--backend", "identity",
               "--backend", f"learned:{trained / 'best.pt'}", "--out", str(out), "--subset", "val", "--pairs", "2"])
    assert rc == 0
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len(rows) == 2 * 2 * 3  # backends x pairs x foreground classes
    assert {r["backend"] for r in rows} == {"identity", f"learned:{trained / 'best.pt'}"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95_mm"]) >= 0.0 for r in rows)
    assert all(r["fixed"].split("_")[0] != r["moving"].split("_")[0] for r in rows)
    table = (out / "summary.md").read_text()
    assert "| `identity` | 2 |" in table and "learned:" in table and "% det J <= 0" in table
    assert "Dice RV" in capsys.readouterr().out


def test_eval_errors_are_one_line_and_write_nothing(folder, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["reg", "eval", "--data", str(folder), "--backend", "bogus", "--out", str(out)]) == 2
    assert "unknown registration backend 'bogus'" in capsys.readouterr().err
    assert main(["reg", "eval", "--data", str(folder), "--backend", f"learned:{tmp_path / 'none.pt'}", "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["reg", "eval", "--data", str(folder), "--backend", "identity", "--subset", "test", "--out", str(out)]) == 2
    assert "try --intra" in capsys.readouterr().err
    assert not out.exists()


def test_train_needs_a_split(tmp_path, capsys):
    root = tmp_path / "nosplit"
    _write_folder(root, 4)
    (root / "split.json").unlink()
    assert main(["reg", "train", "--data", str(root), "--out", str(tmp_path / "run")]) == 2
    assert "pass --split" in capsys.readouterr().err
