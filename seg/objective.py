"""The base objective of a method for one batch: supervised loss per student, cross teaching
between the students, and the pixel contrastive loss over both (METHOD.md parts 2-4, 8).

Every loss comes back weighted (ramp-up included) and keyed ``'<student>/<loss>'`` or
``'joint/cl'``; hooks add their own terms on top (:mod:`seg.hooks`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from seg.config import TrainConfig
from seg.losses import (
    ContrastPart,
    ExtraPositive,
    cross_teaching_loss,
    pixel_contrastive_loss,
    supervised_loss,
)
from seg.slices import SliceBatch
from seg.students import StudentOutput

# student name -> that student's extra contrastive positive for this batch (or None)
ExtraPositives = Callable[[str], Optional[ExtraPositive]]


def teachers(names: list[str]) -> dict[str, str]:
    """Each student's teacher: the other student (a lone student teaches itself)."""
    return {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}


def base_losses(cfg: TrainConfig, cross_teaching: bool, contrastive: bool, batch: SliceBatch, outputs: dict[str, StudentOutput],
                ramp: float, contrast_rng: torch.Generator, extra_positives: ExtraPositives) -> dict[str, torch.Tensor]:
    """The weighted base losses of one batch. ``batch`` is on the CPU, ``outputs`` on the
    students' device; labeled samples come first (``batch.num_labeled`` of them)."""
    nl = batch.num_labeled
    device = next(iter(outputs.values())).logits.device
    label, is_labeled = batch.label.to(device), batch.is_labeled.to(device)
    losses: dict[str, torch.Tensor] = {}
    for n, out in outputs.items():
        losses[f"{n}/sup"] = supervised_loss(out.logits[:nl], label[:nl])
    names = list(outputs)
    teacher = teachers(names)
    if cross_teaching and batch.image.shape[0] > nl:
        w = cfg.cps_weight * ramp
        for n in names:
            unl = cross_teaching_loss(outputs[n].logits[nl:], outputs[teacher[n]].logits[nl:], cfg.cps_loss)
            losses[f"{n}/cps"] = w * unl
    if contrastive:
        parts = []
        labeled_rows = is_labeled[:, None, None]
        for n in names:
            probs = torch.softmax(outputs[teacher[n]].logits.detach(), dim=1)
            conf, pseudo = probs.max(dim=1)
            classes = torch.where(labeled_rows, label, pseudo)
            confidence = torch.where(labeled_rows, torch.ones_like(conf), conf)
            parts.append(ContrastPart(outputs[n].embedding, classes, confidence, extra_positives(n)))
        losses["joint/cl"] = cfg.cl_weight * ramp * pixel_contrastive_loss(parts, cfg.contrast, contrast_rng)
    return losses
