"""Run diagnostics: hidden labels on the sample grid, the accuracy and gradient figures by hand,
the ``diag`` hook's schedule, and that hidden labels never change training."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from layouts import fake_volume
from cctr.seg.config import TrainConfig
from cctr.seg.data.case import Case, CaseRef, spacing_affine
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.diagnostics import (
    DiagnosticsHook,
    foreground_dice,
    hidden_label_slice,
    output_grad_norms,
    pool_accuracy,
)
from cctr.seg.losses import ContrastConfig
from cctr.seg.slices import AugmentConfig, SliceBatch, resize_matrix
from cctr.seg.students import StudentConfig, StudentOutput
from cctr.seg.train import train
from cctr.seg.train_data import load_train_data

NAMES = ("background", "RV", "MYO", "LV")


def test_hidden_label_on_the_sample_grid_matches_the_volume_and_marks_the_outside():
    _, label = fake_volume(3, (3, 16, 16))
    same = torch.from_numpy(resize_matrix((16, 16), (16, 16))).float()
    got, inside = hidden_label_slice(label, 1, same, (16, 16), 4)
    assert torch.equal(got, torch.from_numpy(label[1]).long()) and bool(inside.all())
    shifted = same.clone()
    shifted[1, 2] += 4.0  # sample column c reads volume column c + 4: the last 4 columns fall outside
    got, inside = hidden_label_slice(label, 1, shifted, (16, 16), 4)
    assert not inside[:, 12:].any() and bool(inside[:, :12].all())
    assert torch.equal(got[:, :12], torch.from_numpy(label[1, :, 4:]).long())


def test_pool_accuracy_and_foreground_dice_by_hand():
    truth = torch.tensor([[0, 0, 1, 1, 2, 2]])
    pseudo = torch.tensor([[0, 1, 1, 1, 2, -1]])
    conf = torch.tensor([[0.9, 0.9, 0.5, 0.9, 0.9, 0.9]])
    known = torch.tensor([[True, True, True, True, True, False]])
    got = pool_accuracy(pseudo, conf, truth, known, threshold=0.8)
    # known: 5 pixels, 4 right; pool (conf >= 0.8, has a class): pixels 0, 1, 3, 4, of which 0, 3, 4 right
    assert got["pseudo_acc"] == pytest.approx(4 / 5) and got["pool_share"] == pytest.approx(4 / 5)
    assert got["pool_acc"] == pytest.approx(3 / 4)
    # per pool class precision: class 0 1/1, class 1 1/2 (pixels 1 and 3), class 2 1/1
    assert got["anchor_acc"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert pool_accuracy(pseudo, conf, truth, torch.zeros_like(known), 0.8) == {}
    # class 1: pred {2, 3}, truth {2, 3} -> 1; class 2: pred {4}, truth {4, 5} -> 2/3
    assert foreground_dice(torch.tensor([0, 0, 1, 1, 2, 0]), truth[0], 3) == pytest.approx((1 + 2 / 3) / 2)
    assert foreground_dice(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3) is None


def test_gradient_norms_are_per_term_and_per_output_and_keep_the_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    emb = torch.randn(2, 5, 4, 4, requires_grad=True)
    outputs = {"a": StudentOutput(logits, emb, emb)}
    losses = {"a/sup": 0.5 * (logits ** 2).sum(), "joint/cl": 3.0 * emb.sum(), "a/off": torch.tensor(1.0)}
    norms = output_grad_norms(losses, outputs)
    assert norms["grad_a_sup_a_logits"] == pytest.approx(float(logits.detach().norm()), rel=1e-6)  # d/dL = L
    assert norms["grad_joint_cl_a_emb"] == pytest.approx(3.0 * math.sqrt(emb.numel()), rel=1e-6)
    assert set(norms) == {"grad_a_sup_a_logits", "grad_joint_cl_a_emb"}  # unreached outputs and constants left out
    sum(v for v in losses.values()).backward()  # the graph survived the probes
    assert torch.allclose(logits.grad, logits.detach())


def test_the_hook_reports_only_every_diag_every_steps_and_forgets_after_logging():
    hook = DiagnosticsHook(3, ContrastConfig(), 4, {})
    assert [s for s in range(7) if hook.due(s)] == [0, 3, 6]
    assert not DiagnosticsHook(0, ContrastConfig(), 4, {}).due(0)
    with pytest.raises(ValueError, match="diag_every"):
        DiagnosticsHook(-1, ContrastConfig(), 4, {})
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    out = {"a": StudentOutput(logits, logits, logits)}
    batch = SliceBatch(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([True]), ["c"],
                       torch.zeros(1, dtype=torch.long), torch.eye(3)[None])
    for step in range(4):
        hook.inspect_losses(step, batch, out, {"a/sup": logits.sum()})
        got = hook.metrics()
        assert got == ({"grad_a_sup_a_logits": 4.0, "grad_a_sup_a_emb": 4.0} if step in (0, 3) else {})


def _dataset(root: Path, hide_unlabeled: bool) -> tuple[Dataset, Split]:
    refs = []
    for i in range(5):
        pid = f"p{i}"
        image, label = fake_volume(i, (3, 24, 28))
        if hide_unlabeled and pid in ("p1", "p2"):
            label = None
        case = Case(f"{pid}_ED", pid, image, label, (8.0, 1.5, 1.5), spacing_affine((8.0, 1.5, 1.5)), (), NAMES)
        refs.append(CaseRef(case.case_id, pid, True, loader=lambda c=case: c))
    split = Split(train=("p0", "p1", "p2"), val=("p3",), test=("p4",), labeled_sets={"1": ("p0",)})
    return Dataset("memory", root, tuple(refs), NAMES), split


def _cfg(out: Path) -> TrainConfig:
    return replace(
        TrainConfig(), method="cct", out_dir=str(out), image_size=(32, 64), labeled_batch=2, unlabeled_batch=2,
        augment=AugmentConfig(flip=True), student_a=StudentConfig(kind="unet", widths=(4, 8)),
        student_b=StudentConfig(kind="swin", feature_size=12, window_size=4),
        iterations=4, val_every=4, rampup_fraction=0.5, cl_weight=1.0, diag_every=1,
        contrast=replace(TrainConfig().contrast, confidence=0.0),
    )


def test_hidden_labels_reach_only_the_diagnostics_and_training_is_bit_identical_without_them(tmp_path):
    shown, split = _dataset(tmp_path, hide_unlabeled=False)
    hidden, _ = _dataset(tmp_path, hide_unlabeled=True)
    data = load_train_data(shown, split, "1")
    assert all(c.label is None for c in data.unlabeled)           # the training cases carry no label
    assert sorted(data.diagnostic_labels) == ["p1_ED", "p2_ED"]   # kept apart, for diagnostics
    assert load_train_data(hidden, split, "1").diagnostic_labels == {}

    with_labels = train(_cfg(tmp_path / "shown"), shown, split, progress=False)
    without = train(_cfg(tmp_path / "hidden"), hidden, split, progress=False)
    a = torch.load(with_labels.last_checkpoint, map_location="cpu", weights_only=True)["students"]
    b = torch.load(without.last_checkpoint, map_location="cpu", weights_only=True)["students"]
    assert all(torch.equal(a[s][k], b[s][k]) for s in a for k in a[s])

    def tags(run: str) -> set[str]:
        events = EventAccumulator(str(tmp_path / run / "tb"))
        events.Reload()
        return set(events.Tags()["scalars"])

    shown_tags, hidden_tags = tags("shown"), tags("hidden")
    assert {"diag/pseudo_acc_a", "diag/pool_acc_b", "diag/anchor_acc_a", "diag/pool_share_b"} <= shown_tags
    assert {"diag/grad_joint_cl_a_emb", "diag/grad_a_sup_a_logits", "diag/grad_b_cps_b_logits"} <= shown_tags
    # without hidden labels only the gradient figures remain
    assert not any(t.startswith("diag/pseudo_acc") for t in hidden_tags) and "diag/grad_joint_cl_b_emb" in hidden_tags
