"""Validation during training: every student predicts the validation volumes slice by slice
(:mod:`seg.inference`) and is scored in 3D (:func:`seg.metrics.score_case`); the middle
slice of the first volume goes to TensorBoard as an overlay of truth and predictions."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from cctr.seg.config import TrainConfig
from cctr.seg.data.case import Case
from cctr.seg.inference import INFER_BATCH, predict_labels
from cctr.seg.metrics import score_case
from cctr.seg.overlay import class_colors, overlay


def validate(students: Mapping[str, nn.Module], cases: Sequence[Case], cfg: TrainConfig,
             class_names: Sequence[str]) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Mean 3D Dice and HD95 over classes, then cases, per student, and Dice per class; also
    each student's label map ``(Z, Y, X)`` of the first case (for overlays)."""
    scores: dict[str, dict[str, float]] = {}
    first: dict[str, np.ndarray] = {}
    n = len(class_names)
    for name, model in students.items():
        per_case = []
        for i, case in enumerate(cases):
            pred = predict_labels(model, case.image, cfg.image_size, cfg.normalization, INFER_BATCH,
                                  cfg.intensity_window)
            per_case.append(score_case(pred, case.label, case.spacing, n))
            if i == 0:
                first[name] = pred
        record = {
            "dice": float(np.mean([np.mean([s.dice for s in sc.values()]) for sc in per_case])),
            "hd95": float(np.mean([np.mean([s.hd95 for s in sc.values()]) for sc in per_case])),
        }
        for c in range(1, n):
            record[f"dice_{class_names[c]}"] = float(np.mean([sc[c].dice for sc in per_case]))
        scores[name] = record
    return scores, first


def write_overlays(writer: SummaryWriter, case: Case, predictions: Mapping[str, np.ndarray], num_classes: int,
                   step: int) -> None:
    """Middle slice of ``case``: ground truth and each student's prediction over the image,
    as ``(3, Y, X)`` TensorBoard images."""
    z = case.shape[0] // 2
    colors = class_colors(num_classes)
    writer.add_image("overlay/truth", overlay(case.image[z], case.label[z], colors).transpose(2, 0, 1), step)
    for n, pred in predictions.items():
        writer.add_image(f"overlay/{n}", overlay(case.image[z], pred[z], colors).transpose(2, 0, 1), step)
