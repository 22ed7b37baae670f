"""The plan reads the labels of the run's labeled set only: changing an unlabeled training
patient's label leaves the plan, its fingerprint and a short training run unchanged, while
changing a labeled patient's label changes them."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cctr.joint.app.cli import main
from cctr.joint.plan import PLAN_FILENAME, Plan, labeled_or_default, load_plan, make_plan, plan_for
from cctr.seg.data.fingerprint import fingerprint
from cctr.seg.data.nifti import read_nifti, write_nifti
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import Split

RV, MYO, LV = 1, 2, 3
TRAIN = ["--set", "iterations=3", "--set", "val_every=3", "--set", "labeled_batch=2", "--set", "unlabeled_batch=2",
         "--set", "student_a={kind: unet, widths: [4, 8]}", "--set", "student_b={kind: unet, widths: [4, 8]}",
         "--set", "embedding_dim=8", "--no-progress"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """4 patients: 2 training (one in labeled set '1', one unlabeled), 1 validation, 1 test."""
    return write_phantom(tmp_path_factory.mktemp("labels") / "data", 4, seed=0,
                         cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)


def copy_of(phantom: Path, where: Path) -> tuple[Path, Split]:
    data = shutil.copytree(phantom, where)
    split = open_dataset(data).default_split
    assert len(split.labeled("1")) == 1 and len(split.unlabeled("1")) == 1
    return data, split


def relabel(data: Path, patient: str) -> None:
    """Rewrite the label files of ``patient`` with other classes: RV and LV swapped, a MYO block
    in a corner, every foreground voxel of the last slice background."""
    paths = sorted((data / "labelsTr").glob(f"{patient}_*.nii.gz"))
    assert len(paths) == 2   # ED and ES
    for path in paths:
        label, _, affine, header = read_nifti(path)
        other = label.copy()
        other[label == RV], other[label == LV] = LV, RV
        other[:, :10, :10] = MYO
        other[-1] = 0
        assert not np.array_equal(other, label)
        write_nifti(path, other.astype(label.dtype), affine, header)
        assert np.array_equal(read_nifti(path)[0], other)


def measured(data: Path, split: Split, labeled="1") -> Plan:
    """The plan measured afresh (no saved plan reused), without the time it took."""
    plan = plan_for(open_dataset(data), split, labeled, force=True)
    return replace(plan, fingerprint=replace(plan.fingerprint, seconds=0.0))


def test_the_plan_reads_no_label_outside_its_labeled_set(phantom, tmp_path):
    data, split = copy_of(phantom, tmp_path / "data")
    (labeled,), (unlabeled,) = split.labeled("1"), split.unlabeled("1")
    before = measured(data, split)
    assert before.labeled == (labeled,) and before.patients == tuple(sorted(split.train))
    assert before.fingerprint.labeled == 2 and before.fingerprint.cases == 4   # ED and ES of 2 patients
    assert load_plan(data / PLAN_FILENAME).labeled == (labeled,)
    unlabeled_only = measured(data, split, None)
    assert unlabeled_only.labeled == () and unlabeled_only.fingerprint.labeled == 0
    assert unlabeled_only.fingerprint.roi_mm is None

    def every_label() -> Plan:
        # what a plan that read every training label would see
        plan = make_plan(open_dataset(data), split.train, labeled=split.train)
        return replace(plan, fingerprint=replace(plan.fingerprint, seconds=0.0))

    def own_fingerprint():
        return replace(fingerprint(open_dataset(data), split.train, [labeled]), seconds=0.0)

    fp_before, all_before = own_fingerprint(), every_label()
    assert fp_before == before.fingerprint

    relabel(data, unlabeled)
    assert every_label().fingerprint != all_before.fingerprint   # the change is there for a plan that reads it
    assert measured(data, split) == before
    assert own_fingerprint() == fp_before
    assert measured(data, split, None) == unlabeled_only

    relabel(data, labeled)
    changed = measured(data, split)
    assert changed.fingerprint != before.fingerprint and changed.fingerprint.labeled == 2
    assert own_fingerprint() != fp_before


def test_labeled_or_default_and_cctr_plan_labeled(phantom, tmp_path, capsys):
    data, split = copy_of(phantom, tmp_path / "data")
    assert labeled_or_default(split, None) == "1" and labeled_or_default(split, "all") == "all"
    assert labeled_or_default(None, None) is None
    assert labeled_or_default(replace(split, labeled_sets={}), None) is None
    assert main(["plan", str(data), "--force"]) == 0   # the split's set '1' by default
    assert "labels of 1;" in capsys.readouterr().out
    assert load_plan(data / PLAN_FILENAME).labeled == split.labeled("1")
    assert main(["plan", str(data), "--labeled", "all"]) == 0
    assert "labels of 2;" in capsys.readouterr().out
    assert load_plan(data / PLAN_FILENAME).labeled == tuple(sorted(split.train))


def student_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Student name -> its state dict, from ``last.pt``."""
    students = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["students"]
    assert set(students) == {"a", "b"} and all(students.values())
    assert all(isinstance(v, torch.Tensor) for state in students.values() for v in state.values())
    return students


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys() and all(torch.equal(a[s][k], b[s][k]) for k in a[s]) for s in a)


def test_a_short_run_does_not_depend_on_an_unlabeled_patients_label(phantom, tmp_path):
    def trained(name: str, relabelled: str = "") -> dict:
        data, split = copy_of(phantom, tmp_path / name / "data")
        if relabelled:
            relabel(data, (split.labeled("1") if relabelled == "labeled" else split.unlabeled("1"))[0])
        run = tmp_path / name / "run"
        assert main(["train", "--data", str(data), "--labeled", "1", "--method", "cctr", "--reg-backend", "identity",
                     "--out", str(run), *TRAIN]) == 0
        return student_weights(run)

    original = trained("original")
    assert same_weights(trained("unlabeled-relabelled", "unlabeled"), original)   # bit-identical
    assert not same_weights(trained("labeled-relabelled", "labeled"), original)   # the labels a run learns from
