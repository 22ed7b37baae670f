"""The base objective of a method for one batch: supervised loss per student, cross teaching
between the students, and the pixel contrastive loss over both (METHOD.md parts 2-4, 8).

Every loss comes back weighted (ramp-up included) and keyed ``'<student>/<loss>'`` or
``'joint/cl'``; hooks add their own terms on top (:mod:`seg.hooks`), and the supervised loss on
the labeled samples a hook adds to a step is here too (:func:`extra_sample_losses`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from cctr.seg.config import TrainConfig
from cctr.seg.hooks import ExtraSamples
from cctr.seg.losses import (
    ContrastPart,
    ExtraKeys,
    PartAnchors,
    cross_teaching_loss,
    draw_anchors,
    pixel_contrastive_loss,
    supervised_loss,
)
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentOutput

# (student name, its anchors) -> that student's extra contrastive positives for them (or None)
ExtraPositives = Callable[[str, PartAnchors], Optional[ExtraKeys]]


def teachers(names: list[str]) -> dict[str, str]:
    """Each student's teacher: the other student (a lone student teaches itself)."""
    return {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}


def pseudo_labels(source: str, own_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A student's pseudo-label ``(B, H, W)`` int64 (-1: none) and its confidence ``(B, H, W)``
    from the detached softmax of ``'teacher'`` (the other student), ``'own'`` (the student
    itself) or ``'agree'`` (the teacher's class where both argmaxes agree, -1 elsewhere; the
    confidence is the lower of the two top-1 probabilities). Logits are ``(B, C, H, W)``."""
    teacher_conf, teacher_cls = torch.softmax(teacher_logits.detach(), dim=1).max(dim=1)
    if source == "teacher":
        return teacher_cls, teacher_conf
    own_conf, own_cls = torch.softmax(own_logits.detach(), dim=1).max(dim=1)
    if source == "own":
        return own_cls, own_conf
    if source == "agree":
        agree = own_cls == teacher_cls
        return torch.where(agree, teacher_cls, torch.full_like(teacher_cls, -1)), torch.minimum(own_conf, teacher_conf)
    raise ValueError(f"unknown pseudo-label source {source!r}; expected 'teacher', 'own' or 'agree'")


def contrast_pool(source: str, own_logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor,
                  is_labeled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One student's classes and confidences ``(B, H, W)`` for the pixel contrastive pool:
    the ground truth (confidence 1) on labeled rows, :func:`pseudo_labels` on the others.
    ``label`` is ``(B, H, W)``, ``is_labeled`` ``(B,)``; all on the logits' device."""
    pseudo, conf = pseudo_labels(source, own_logits, teacher_logits)
    labeled_rows = is_labeled[:, None, None]
    return torch.where(labeled_rows, label, pseudo), torch.where(labeled_rows, torch.ones_like(conf), conf)


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
        for n in names:
            classes, confidence = contrast_pool(cfg.contrast.pseudo_source, outputs[n].logits, outputs[teacher[n]].logits,
                                                label, is_labeled)
            parts.append(ContrastPart(outputs[n].embedding, classes, confidence))
        draw = draw_anchors(parts, cfg.contrast, contrast_rng)
        extra = [extra_positives(n, draw.anchors_of(p)) for p, n in enumerate(names)] if draw is not None else []
        losses["joint/cl"] = cfg.cl_weight * ramp * pixel_contrastive_loss(parts, draw, cfg.contrast.temperature, extra)
    return losses


def first_rows(out: StudentOutput, count: int) -> StudentOutput:
    """The first ``count`` samples of a student's output (the batch's, when extra samples follow)."""
    return StudentOutput(out.logits[:count], out.features[:count], out.embedding[:count])


def extra_sample_losses(extras: Mapping[str, ExtraSamples], outputs: Mapping[str, StudentOutput],
                        offset: int) -> dict[str, torch.Tensor]:
    """``'<student>/<hook>'``: ``weight * supervised loss`` of each hook's extra samples, whose
    outputs follow the batch's in ``outputs`` from row ``offset`` on, in the order of ``extras``.
    A hook that adds no sample this step still gets a (zero) term, so every step logs the same keys."""
    losses: dict[str, torch.Tensor] = {}
    for hook, extra in extras.items():
        count = extra.image.shape[0]
        for n, out in outputs.items():
            logits = out.logits[offset:offset + count]
            losses[f"{n}/{hook}"] = (extra.weight * supervised_loss(logits, extra.label.to(logits.device))
                                     if count else out.logits.sum() * 0.0)
        offset += count
    return losses
