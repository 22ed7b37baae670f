"""Run diagnostics: what the semi-supervised terms see and how hard each one pulls, logged under
``diag/`` for every run by :class:`DiagnosticsHook` (name ``diag``), every ``diag_every`` steps.

Per student ``s`` (``a``, ``b``), on the unlabeled samples of the step's batch, where the
dataset has a label for an "unlabeled" volume (the phantoms do: ``TrainData.diagnostic_labels``,
read here and never by a loss):

- ``diag/pseudo_acc_<s>``: share of in-volume pixels whose pool pseudo-label (the source
  ``contrast.pseudo_source`` names, :func:`seg.objective.pseudo_labels`) equals the hidden label;
- ``diag/pool_share_<s>``: share of those pixels confident enough (``>= contrast.confidence``)
  to enter the contrastive pool;
- ``diag/pool_acc_<s>``: accuracy of the pool pixels;
- ``diag/anchor_acc_<s>``: mean over the pseudo-classes in the pool of their precision, i.e.
  the expected accuracy of class-balanced anchors (each class gets the same number), the
  figure that says how noisy the anchors of the small foreground classes are.

For every weighted loss term (``a/sup``, ``joint/cl``, ``b/rsl``, ...) and student:
``diag/grad_<term>_<s>_logits`` and ``..._emb``, the L2 norm of the term's gradient with
respect to that student's logits ``(B, C, H, W)`` and embedding ``(B, D, H, W)``. The norm
with respect to the outputs, not the parameters, is a cheap proxy (no backward through the
network) that still ranks which term drives the student.

The share of anchors with a valid registration positive is the REPS hook's own scalar
(``reps/valid_fraction``) and the Dice of the RSL target against the hidden label is the
RSL hook's (``rsl/target_dice_hidden``).

Nothing here draws from a training RNG or changes a tensor the students train on, so a run
is bit-identical with or without hidden labels and whatever ``diag_every`` is.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cctr.seg.hooks import Outputs, TrainerHook
from cctr.seg.losses import ContrastConfig
from cctr.seg.objective import pseudo_labels, teachers
from cctr.seg.slices import SliceBatch, resample_slice


def hidden_label_slice(label_zyx: np.ndarray, z: int, to_volume: torch.Tensor, out_hw: tuple[int, int],
                       num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice ``z`` of a hidden label ``(Z, Y, X)`` on a sample grid, resampled the way RSL
    resamples warped labels (one-hot, bilinear through ``to_volume`` (3, 3), then argmax).
    Returns ``(int64 (H, W) label, bool (H, W) inside)``; pixels outside the slice are not inside."""
    plane = torch.from_numpy(np.ascontiguousarray(label_zyx[z:z + 1])).long()        # (1, Y, X)
    onehot = F.one_hot(plane, num_classes).permute(3, 0, 1, 2).float()               # (C, 1, Y, X)
    probs = resample_slice(onehot, 0, to_volume, out_hw, "linear")                   # (C, H, W)
    return probs.argmax(dim=0), probs.sum(dim=0) > 0.5


def hidden_labels_of(batch: SliceBatch, hidden: Mapping[str, np.ndarray], rows: torch.Tensor,
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden labels of the batch samples ``rows`` (R,): ``(int64 (R, H, W), bool (R, H, W) known)``;
    a sample whose volume has no hidden label is all unknown."""
    out_hw = tuple(batch.image.shape[-2:])
    labels = torch.zeros((rows.numel(), *out_hw), dtype=torch.int64)
    known = torch.zeros((rows.numel(), *out_hw), dtype=torch.bool)
    for i, b in enumerate(rows.tolist()):
        volume = hidden.get(batch.case_id[b])
        if volume is not None:
            labels[i], known[i] = hidden_label_slice(volume, int(batch.slice_index[b]), batch.to_volume[b], out_hw,
                                                     num_classes)
    return labels, known


def foreground_dice(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> Optional[float]:
    """Mean Dice over the foreground classes (1..C-1) present in ``pred`` or ``truth`` (same
    shape, int64), pooled over all their pixels; None when no foreground class is present."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = int(p.sum()) + int(t.sum())
        if denom:
            scores.append(2.0 * int((p & t).sum()) / denom)
    return float(np.mean(scores)) if scores else None


def pool_accuracy(pseudo: torch.Tensor, confidence: torch.Tensor, truth: torch.Tensor, known: torch.Tensor,
                  threshold: float) -> dict[str, float]:
    """Accuracy figures of pseudo-labels ``(R, H, W)`` (-1: none) with ``confidence`` against
    ``truth`` where ``known`` (see the module docstring for the keys; a figure with no pixel to
    measure is left out)."""
    out: dict[str, float] = {}
    seen = known  # a pixel without a pseudo-label ('agree' where the students differ) counts as wrong
    if not bool(seen.any()):
        return out
    right = (pseudo == truth) & seen
    out["pseudo_acc"] = float(right.sum()) / float(seen.sum())
    pool = seen & (pseudo >= 0) & (confidence >= threshold)
    out["pool_share"] = float(pool.sum()) / float(seen.sum())
    if bool(pool.any()):
        out["pool_acc"] = float((right & pool).sum()) / float(pool.sum())
        precisions = [float((right & pool & (pseudo == c)).sum()) / float((pool & (pseudo == c)).sum())
                      for c in torch.unique(pseudo[pool]).tolist()]
        out["anchor_acc"] = float(np.mean(precisions))
    return out


def output_grad_norms(losses: Mapping[str, torch.Tensor], outputs: Outputs) -> dict[str, float]:
    """``{'grad_<term>_<student>_logits' | '..._emb': norm}``: the L2 norm of each term's
    gradient with respect to each student's logits and embedding (a student a term does not
    reach is left out). The graph is kept for the real backward."""
    inputs, names = [], []
    for student, out in outputs.items():
        for what, tensor in (("logits", out.logits), ("emb", out.embedding)):
            if tensor.requires_grad:   # a method without the contrastive loss does not train the embedding
                inputs.append(tensor)
                names.append(f"{student}_{what}")
    norms: dict[str, float] = {}
    for term, value in losses.items():
        if not value.requires_grad:
            continue
        grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        key = term.replace("/", "_")
        for name, grad in zip(names, grads):
            if grad is not None:
                norms[f"grad_{key}_{name}"] = float(grad.norm())
    return norms


class DiagnosticsHook(TrainerHook):
    """The ``diag`` hook every run carries; ``every`` 0 turns it off.

    ``hidden_labels``: case id -> uint8 ``(Z, Y, X)`` label of unlabeled training volumes,
    used for the accuracy figures only. ``contrast`` gives the pool's pseudo-label source and
    confidence threshold.
    """

    name = "diag"

    def __init__(self, every: int, contrast: ContrastConfig, num_classes: int,
                 hidden_labels: Mapping[str, np.ndarray]) -> None:
        if every < 0:
            raise ValueError(f"diag_every must be >= 0, got {every}")
        self.every = every
        self.contrast = contrast
        self.num_classes = num_classes
        self.hidden = hidden_labels
        self._pending: dict[str, float] = {}

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def inspect_losses(self, step: int, batch: SliceBatch, outputs: Outputs, losses: Mapping[str, torch.Tensor]) -> None:
        if not self.due(step):
            return
        with torch.no_grad():
            self._pending.update(self._pool_figures(batch, outputs))
        self._pending.update(output_grad_norms(losses, outputs))

    def _pool_figures(self, batch: SliceBatch, outputs: Outputs) -> dict[str, float]:
        if not self.hidden:
            return {}
        rows = torch.nonzero(~batch.is_labeled).flatten()
        if rows.numel() == 0:
            return {}
        truth, known = hidden_labels_of(batch, self.hidden, rows, self.num_classes)
        if not bool(known.any()):
            return {}
        out: dict[str, float] = {}
        teacher = teachers(list(outputs))
        for student, o in outputs.items():
            index = rows.to(o.logits.device)
            pseudo, conf = pseudo_labels(self.contrast.pseudo_source, o.logits[index], outputs[teacher[student]].logits[index])
            figures = pool_accuracy(pseudo.cpu(), conf.cpu(), truth, known, self.contrast.confidence)
            out.update({f"{key}_{student}": value for key, value in figures.items()})
        return out

    def metrics(self) -> dict[str, float]:
        out, self._pending = self._pending, {}
        return out
