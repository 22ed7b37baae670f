"""Unlabeled scans are the point of the tool: those added after split.json was written join the
unlabeled pool of training runs (said in one line), never validation or test; `cctr data
split` puts patients without labels in train only and refuses a split with nothing to train
on; a training case whose spacing is far from the others' is warned about."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cctr.joint.app.cli import main
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split
from cctr.seg.train_data import load_train_data
from layouts import affine_zyx, fake_volume, save_nifti_zyx, write_nnunet
from test_exit_statuses import TINY

CASES = tuple(f"patient00{i}_{f}" for i in range(1, 6) for f in ("ED", "ES"))
SPLIT = {"train": ["patient001", "patient002", "patient003"], "val": ["patient004"], "test": ["patient005"],
         "labeled_sets": {"1": ["patient001"]}}
SPACING = (8.0, 1.5, 1.25)


def _data(root: Path) -> Path:
    write_nnunet(root, labeled=CASES, shape=(3, 24, 28), spacing=SPACING, split=SPLIT)
    return root


def _add_scan(root: Path, folder: str, case_id: str, seed: int) -> None:
    save_nifti_zyx(root / folder / f"{case_id}_0000.nii.gz", fake_volume(seed, (3, 24, 28))[0], affine_zyx(SPACING))


def test_scans_added_after_the_split_join_the_unlabeled_pool_only(tmp_path, capsys):
    data = _data(tmp_path / "data")
    _add_scan(data, "imagesUnlabeled", "extra01", 11)
    _add_scan(data, "imagesUnlabeled", "extra02", 12)
    _add_scan(data, "imagesTs", "held01", 13)            # a test scan without label: never trained on
    dataset = open_dataset(data)
    loaded = load_train_data(dataset, dataset.default_split, "1")
    assert {c.case_id for c in loaded.unlabeled} == {"patient002_ED", "patient002_ES", "patient003_ED",
                                                     "patient003_ES", "extra01", "extra02"}
    assert {c.case_id for c in loaded.val} == {"patient004_ED", "patient004_ES"}
    assert loaded.unlisted == ("extra01", "extra02")
    assert main(["train", "--data", str(data), "--labeled", "1", "--method", "ct", "--out", str(tmp_path / "run"),
                 *TINY]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "not in the split" in line]
    assert notes == ["cctr: note: 2 unlabeled patient(s) not in the split join the unlabeled pool (extra01, extra02)"]


def test_data_split_puts_unlabeled_patients_in_train_only_and_refuses_an_empty_train(tmp_path, capsys):
    data = _data(tmp_path / "data")
    for i in range(6):
        _add_scan(data, "imagesUnlabeled", f"extra{i:02d}", 20 + i)
    for seed in range(5):
        assert main(["data", "split", str(data), "--seed", str(seed), "--labeled", "1,2"]) == 0
        split = load_split(data / "split.json")
        extra = {f"extra{i:02d}" for i in range(6)}
        assert extra <= set(split.train) and not extra & {*split.val, *split.test}
        assert not extra & {p for ids in split.labeled_sets.values() for p in ids}
    capsys.readouterr()
    before = (data / "split.json").read_text()
    assert main(["data", "split", str(data), "--seed", "0", "--val-fraction", "0.4", "--test-fraction", "0.6"]) == 2
    assert "leave no patient to train on; lower the fractions" in capsys.readouterr().err
    assert (data / "split.json").read_text() == before


def test_a_training_case_with_an_outlier_spacing_is_warned_about(tmp_path, capsys):
    data = _data(tmp_path / "data")
    image, label = fake_volume(3, (3, 24, 28))
    wrong = affine_zyx((8000.0, 1.5, 1.25))              # a slice gap in micrometres
    save_nifti_zyx(data / "imagesTr" / "patient002_ED_0000.nii.gz", image, wrong)
    save_nifti_zyx(data / "labelsTr" / "patient002_ED.nii.gz", label, wrong)
    assert main(["train", "--data", str(data), "--labeled", "1", "--method", "ct", "--out", str(tmp_path / "run"),
                 *TINY]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "median" in line]
    assert len(warned) == 1 and "patient002_ED_0000.nii.gz: spacing (8000, 1.5, 1.25) mm (z, y, x)" in warned[0]
    assert "far from the training cases' median (8, 1.5, 1.25) mm along z" in warned[0]
    assert json.loads((data / "split.json").read_text())["train"] == SPLIT["train"]
    assert np.isfinite(image).all()
