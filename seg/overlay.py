"""The one overlay renderer: a grey image slice with its label map drawn over it, used by the
dataset montage, the trainer's TensorBoard images and the application's figures alike.

Layouts: image and label slices ``(Y, X)``; the result is RGB ``(Y, X, 3)`` float in [0, 1].
Class 0 (background) is never drawn; class ``c`` always gets the colour ``class_colors(n)[c]``
so a class looks the same in every figure of a run.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib import colormaps

FILL_ALPHA = 0.2


def class_colors(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1]; row 0 (background) is black and never drawn."""
    cmap = colormaps["tab10" if num_classes <= 11 else "tab20"]
    return np.array([(0.0, 0.0, 0.0)] + [cmap(i % cmap.N)[:3] for i in range(num_classes - 1)])


def grey_window(image: np.ndarray) -> tuple[float, float]:
    """Display window of an image or volume: its 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def overlay(image_yx: np.ndarray, label_yx: Optional[np.ndarray], colors: np.ndarray,
            window: Optional[tuple[float, float]] = None) -> np.ndarray:
    """RGB ``(Y, X, 3)``: the slice windowed (default: its own :func:`grey_window`), each
    labeled class filled translucently and outlined where its pixels touch another class."""
    lo, hi = window if window is not None else grey_window(image_yx)
    grey = np.clip((image_yx - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label_yx is None:
        return rgb
    lab = label_yx.astype(np.intp)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    fg = lab > 0
    tint = colors[lab % len(colors)]
    alpha = np.where(fg & edge, 1.0, np.where(fg, FILL_ALPHA, 0.0))[..., None]
    return rgb * (1.0 - alpha) + tint * alpha
