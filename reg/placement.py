"""Putting volumes, and then pairs, on the canonical grid: the shared front end of every
backend that registers on that grid (learned and classical alike, so they compare fairly).

A :class:`Placed` volume holds its canonical-grid image and the 4x4 map from canonical voxel
to its native voxel. :func:`place_pair` re-places the moving volume of a pair after the
pairwise rigid search of :mod:`reg.prealign`; a backend then only has to find a canonical
displacement from the fixed placement to the moving one, and :func:`field_of` turns that
displacement into a :class:`~reg.field.CanonicalField` (the native Field, evaluated lazily).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cctr.reg.field import CanonicalField, Field
from cctr.reg.grid import CanonicalGrid, Pose, canonical_to_native, native_center, to_grid, window_intensity
from cctr.reg.prealign import PrealignConfig, align_moments, search_rigid


@dataclass(frozen=True)
class FrontEnd:
    """What every backend shares before its deformable step: the canonical grid volumes are placed
    on and the pre-alignment of each pair. A learned net's is in its checkpoint; the classical
    backends take a dataset's plan (:mod:`reg.plan`)."""

    grid: CanonicalGrid = CanonicalGrid()
    prealign: PrealignConfig = PrealignConfig()


@dataclass(frozen=True)
class Placed:
    image: np.ndarray  # float32 (Zc, Yc, Xc) in [0, 1], canonical grid
    to_native: np.ndarray  # 4x4: canonical voxel -> native voxel
    native_image: np.ndarray  # float32 (Z, Y, X) in [0, 1], the normalised native volume
    native_spacing: tuple[float, float, float]

    @property
    def native_shape(self) -> tuple[int, int, int]:
        return tuple(self.native_image.shape)  # type: ignore[return-value]

    def canonical_onehot(self, label_zyx: np.ndarray, num_classes: int) -> np.ndarray:
        """A native label map of this volume as soft one-hot on the canonical grid (C, Zc, Yc, Xc)."""
        shape = self.image.shape
        return Field.from_affine(self.to_native, shape, self.native_shape).warp_onehot(label_zyx, num_classes)


def check_volume(image_zyx: np.ndarray, spacing_zyx: Sequence[float], what: str) -> None:
    """Raise ValueError naming ``what`` for an image or spacing the registration cannot take."""
    img = np.asarray(image_zyx)
    if img.ndim != 3 or min(img.shape) < 1:
        raise ValueError(f"{what}: expected a 3D (Z, Y, X) volume, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError(f"{what}: image has NaN or inf voxels")
    sp = np.asarray(spacing_zyx, dtype=float)
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise ValueError(f"{what}: spacing must be three positive mm values (z, y, x), got {tuple(spacing_zyx)}")


def place_volume(image_zyx: np.ndarray, spacing_zyx: Sequence[float], grid: CanonicalGrid) -> Placed:
    """Normalise a native volume and resample it on the canonical grid centred on it."""
    check_volume(image_zyx, spacing_zyx, "volume")
    native = window_intensity(image_zyx, grid.window)
    spacing = tuple(float(s) for s in spacing_zyx)
    to_native = canonical_to_native(grid, spacing, Pose(native_center(native.shape, spacing)))
    return Placed(to_grid(native, to_native, grid), to_native, native, spacing)  # type: ignore[arg-type]


def place_pair(
    fixed: Placed, moving: Placed, grid: CanonicalGrid, prealign: PrealignConfig
) -> Placed:
    """The moving volume re-placed so that its canonical grid matches the fixed one rigidly."""
    if prealign.method == "search" and grid.spacing[1] != grid.spacing[2]:
        raise ValueError(f"the rigid search turns the grid in-plane, so it needs equal y and x spacing; got {grid.spacing}")
    if prealign.method == "moments":
        rigid = align_moments(fixed.image, moving.image, grid.spacing, prealign)
    else:
        rigid = search_rigid(fixed.image, moving.image, grid.spacing[1], prealign)
    if np.allclose(rigid, np.eye(4)):
        return moving
    to_native = moving.to_native @ rigid
    return Placed(to_grid(moving.native_image, to_native, grid), to_native, moving.native_image, moving.native_spacing)


def field_of(disp_canonical: Optional[np.ndarray], fixed: Placed, moving: Placed) -> CanonicalField:
    """The Field of a canonical displacement (3, Zc, Yc, Xc) between placements (``None``: no
    deformation beyond the placements), kept compact."""
    disp = np.zeros((3, 1, 1, 1), np.float32) if disp_canonical is None else disp_canonical
    return CanonicalField(disp, fixed.to_native, fixed.native_shape, moving.to_native, moving.native_shape)
