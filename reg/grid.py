"""The canonical grid every backend registers on, and how a native volume is put onto it.

A :class:`CanonicalGrid` is one fixed shape and one fixed voxel spacing in mm, so every
volume is seen at the same physical scale whatever its native resolution. Cardiac cine
stacks have 6-18 thick slices (5-10 mm) and fine in-plane pixels (about 1-2 mm): the grid
keeps few slices and a moderate in-plane size, each size divisible by 16 so that a 4-level
U-Net halves it cleanly.

A :class:`Pose` says where the grid sits in the native volume: which native point (mm,
measured from the centre of native voxel 0) its centre lands on, and by how much it is
turned in-plane. :func:`canonical_to_native` is the 4x4 homogeneous map from canonical voxel
``(z, y, x, 1)`` to native voxel ``(z, y, x, 1)``; :mod:`reg.field` composes these maps.

The grid also fixes how intensities reach it: by default each volume's 1st-99th percentile
range maps to [0, 1]; a ``window`` (raw units, e.g. Hounsfield units of CT, where the
percentiles of a volume are mostly air) maps that fixed range instead, for every volume.
:mod:`reg.plan` derives all of it from a dataset's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cctr.reg.field import Field
from cctr.reg.options import option


@dataclass(frozen=True)
class CanonicalGrid:
    shape: tuple[int, int, int] = option((16, 64, 64), "canonical grid (Z, Y, X) in voxels, each a multiple of 16; planned")
    spacing: tuple[float, float, float] = option((7.5, 2.2, 2.2), "canonical grid spacing (z, y, x) in mm; planned")
    window: Optional[tuple[float, float]] = option(None, "raw (low, high) intensities mapped to [0, 1] (CT); "
                                                         "None: each volume's 1-99th percentiles; planned")

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) < 1 or int(n) % 16 for n in self.shape):
            raise ValueError(f"canonical grid shape must be three sizes divisible by 16, got {self.shape}")
        if len(self.spacing) != 3 or any(not float(s) > 0 for s in self.spacing):
            raise ValueError(f"canonical grid spacing must be three positive mm values, got {self.spacing}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.window is not None:
            if len(self.window) != 2 or not float(self.window[1]) > float(self.window[0]):
                raise ValueError(f"canonical grid intensity window must be (low, high) with high > low, got {self.window}")
            object.__setattr__(self, "window", (float(self.window[0]), float(self.window[1])))


@dataclass(frozen=True)
class Pose:
    """Where the canonical grid's centre lands in a native volume (mm from native voxel 0,
    (z, y, x)) and its in-plane rotation (radians, turning the grid's +y axis towards +x)."""

    center_mm: tuple[float, float, float]
    angle: float = 0.0


def native_center(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    """The geometric centre of a native volume, mm from the centre of voxel 0."""
    return tuple(float((n - 1) / 2.0 * s) for n, s in zip(shape_zyx, spacing_zyx))  # type: ignore[return-value]


def canonical_to_native(grid: CanonicalGrid, native_spacing: Sequence[float], pose: Pose) -> np.ndarray:
    """4x4 map from canonical voxel (z, y, x, 1) to native voxel (z, y, x, 1)."""
    c0 = (np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0
    to_mm = np.diag(grid.spacing)
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    to_native_vox = np.diag(1.0 / np.asarray(native_spacing, dtype=np.float64))
    linear = to_native_vox @ rot @ to_mm
    offset = to_native_vox @ (np.asarray(pose.center_mm, dtype=np.float64)) - linear @ c0
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = offset
    return m


def normalize_intensity(image_zyx: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map the ``low_pct``..``high_pct`` percentile range to [0, 1], clipping beyond it."""
    img = np.asarray(image_zyx, dtype=np.float32)
    lo, hi = np.percentile(img, [low_pct, high_pct])
    if not hi > lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def window_intensity(image_zyx: np.ndarray, window: Optional[tuple[float, float]]) -> np.ndarray:
    """The grid's intensity mapping: the fixed raw ``window`` to [0, 1] (clipped), or the
    volume's own percentiles when there is none (:func:`normalize_intensity`)."""
    if window is None:
        return normalize_intensity(image_zyx)
    lo, hi = window
    img = np.asarray(image_zyx, dtype=np.float32)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_grid(volume_zyx: np.ndarray, to_native: np.ndarray, grid: CanonicalGrid) -> np.ndarray:
    """Resample a native volume (already normalised) on the canonical grid: float32 (Zc, Yc, Xc),
    linear, 0 outside the native volume."""
    return Field.from_affine(to_native, grid.shape, np.shape(volume_zyx)).warp_image(volume_zyx)
