"""Is an input volume's geometry like the training data's? A student trained on slices of one
spacing and field of view segments a volume resampled 2x, cropped to a quarter, tiny, or with
its axes swapped without any error, and badly. The trainer stores :func:`geometry_stats` of
its training cases in the checkpoint (key ``"geometry"``); :func:`geometry_warnings` compares
an input with them, and ``cctr predict`` prints the warnings (or refuses, with
``--strict-geometry``).

The statistics are plain lists of floats (they load with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

AXES = ("z", "y", "x")
TOLERANCE = 1.5      # a spacing or field of view within [min / 1.5, max * 1.5] of training is fine
MIN_IN_PLANE = 16    # fewer voxels than this along y or x: too small to segment slice by slice
ANISOTROPY = 1.5     # thickest / thinnest spacing above this: the volume has a slice axis


def geometry_stats(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Per-axis (z, y, x) minimum and maximum of spacing (mm), shape (voxels) and field of view
    (mm) over the training cases, and the median spacing."""
    sp = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    sh = np.asarray(shapes, dtype=np.float64).reshape(-1, 3)
    if len(sp) == 0 or len(sp) != len(sh):
        raise ValueError(f"geometry statistics need one spacing and one shape per case, got {len(sp)} and {len(sh)}")
    fov = sp * sh

    def per_axis(values: np.ndarray) -> list[float]:
        return [float(v) for v in values]

    return {
        "cases": int(len(sp)),
        "spacing_min": per_axis(sp.min(0)), "spacing_max": per_axis(sp.max(0)), "spacing_median": per_axis(np.median(sp, 0)),
        "shape_min": per_axis(sh.min(0)), "shape_max": per_axis(sh.max(0)),
        "fov_min_mm": per_axis(fov.min(0)), "fov_max_mm": per_axis(fov.max(0)),
    }


def _outside(value: float, low: float, high: float) -> bool:
    return value < low / TOLERANCE or value > high * TOLERANCE


def geometry_warnings(stats: Mapping[str, Any], spacing_zyx: Sequence[float], shape_zyx: Sequence[int]) -> list[str]:
    """Plain-language warnings (empty when the input looks like the training data)."""
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    shape = np.asarray(shape_zyx, dtype=np.float64)
    out: list[str] = []
    train_median = np.asarray(stats["spacing_median"], dtype=np.float64)
    thick_train, thick_in = int(np.argmax(train_median)), int(np.argmax(spacing))
    if (train_median.max() / train_median.min() > ANISOTROPY and spacing.max() / spacing.min() > ANISOTROPY
            and thick_train != thick_in):
        out.append(f"the thickest spacing is along {AXES[thick_in]} ({spacing[thick_in]:g} mm) but along "
                   f"{AXES[thick_train]} in training: are the axes swapped?")
    for a, name in enumerate(AXES):
        lo, hi = stats["spacing_min"][a], stats["spacing_max"][a]
        if _outside(spacing[a], lo, hi):
            out.append(f"spacing {name} {spacing[a]:g} mm is far from training's {lo:g}-{hi:g} mm")
        fov, lo, hi = spacing[a] * shape[a], stats["fov_min_mm"][a], stats["fov_max_mm"][a]
        if _outside(fov, lo, hi):
            out.append(f"field of view {name} {fov:.0f} mm is far from training's {lo:.0f}-{hi:.0f} mm")
    for a in (1, 2):
        if shape[a] < MIN_IN_PLANE:
            out.append(f"only {int(shape[a])} voxels along {AXES[a]}: too small to segment")
    return out
