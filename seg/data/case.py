"""The case model: one 3D volume (and its optional label map) in a single uniform form.

Layout conventions, used everywhere in the project:

- ``image``: float32 array ``(Z, Y, X)``; Z is the slowest (slice) axis, X the fastest.
- ``label``: uint8 array ``(Z, Y, X)`` of class indices ``0 .. len(class_names) - 1``,
  or ``None`` for an unlabeled case.
- ``spacing``: ``(z, y, x)`` voxel size in mm, same order as the array axes.
- ``affine``: 4x4 NIfTI affine mapping the *NIfTI* voxel index ``(i, j, k)`` to world mm.
  NIfTI arrays are stored ``(X, Y, Z)``, so ``(i, j, k) = (x, y, z)``: array index
  ``[z, y, x]`` of a case is NIfTI voxel ``(x, y, z)``. Formats without geometry get
  ``diag(sx, sy, sz, 1)``.

Readers return :class:`CaseRef` objects, which load lazily, so a dataset of hundreds of
volumes costs nothing until a case is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np


class CaseError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_id: str
    image: np.ndarray
    label: Optional[np.ndarray]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    sources: tuple[Path, ...]
    class_names: tuple[str, ...]
    header: object = None  # the source nibabel header, kept so NIfTI output round-trips

    def __post_init__(self) -> None:
        validate_case(self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_label(self, label: Optional[np.ndarray]) -> "Case":
        return replace(self, label=label)


def _where(case: Case) -> str:
    return ", ".join(str(p) for p in case.sources) or case.case_id


def validate_case(case: Case) -> None:
    """Raise :class:`CaseError` naming the source file(s) when ``case`` breaks the model."""
    where = _where(case)
    img = case.image
    if not isinstance(img, np.ndarray) or img.ndim != 3:
        raise CaseError(f"{where}: image must be 3D (Z, Y, X), got shape {getattr(img, 'shape', None)}")
    if img.dtype != np.float32:
        raise CaseError(f"{where}: image must be float32, got {img.dtype}")
    if min(img.shape) < 1:
        raise CaseError(f"{where}: image is empty, shape {img.shape}")
    if not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise CaseError(f"{where}: image has {bad} NaN or inf voxel(s)")
    sp = np.asarray(case.spacing, dtype=float)
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise CaseError(f"{where}: spacing must be three positive mm values (z, y, x), got {case.spacing}")
    aff = np.asarray(case.affine)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise CaseError(f"{where}: affine must be a finite 4x4 matrix, got shape {aff.shape}")
    if not case.class_names:
        raise CaseError(f"{where}: no class names given")
    if case.label is not None:
        lab = case.label
        if lab.shape != img.shape:
            raise CaseError(f"{where}: label shape {lab.shape} does not match image shape {img.shape}")
        if lab.dtype != np.uint8:
            raise CaseError(f"{where}: label must be uint8, got {lab.dtype}")
        top = int(lab.max()) if lab.size else 0
        if top >= len(case.class_names):
            found = sorted(int(v) for v in np.unique(lab) if v >= len(case.class_names))
            raise CaseError(
                f"{where}: label values {found} are outside the declared classes "
                f"0..{len(case.class_names) - 1} {list(case.class_names)}"
            )


def label_to_uint8(label: np.ndarray, where: str, num_classes: int) -> np.ndarray:
    """Convert a label array of any numeric dtype to uint8, refusing non-integer or out-of-range values."""
    arr = np.asarray(label)
    if not np.isfinite(arr).all():
        raise CaseError(f"{where}: label has NaN or inf voxels")
    rounded = np.rint(arr)
    if not np.array_equal(rounded, arr):
        raise CaseError(f"{where}: label has non-integer values")
    if arr.size and (rounded.min() < 0 or rounded.max() >= num_classes):
        found = sorted(int(v) for v in np.unique(rounded) if v < 0 or v >= num_classes)
        raise CaseError(f"{where}: label values {found} are outside the declared classes 0..{num_classes - 1}")
    return rounded.astype(np.uint8)


def spacing_affine(spacing_zyx: Sequence[float]) -> np.ndarray:
    """The NIfTI affine of a volume with no other geometry: axis-aligned, origin at 0."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    return np.diag([sx, sy, sz, 1.0])


@dataclass(frozen=True)
class CaseRef:
    """A case not loaded yet. ``load()`` reads it from disk (and validates it) each time it is called.

    ``meta`` holds what the release says about the case without reading its voxels, e.g.
    ``{"phase": "ED", "group": "DCM"}`` for raw ACDC.
    """

    case_id: str
    patient_id: str
    has_label: bool
    loader: Callable[[], Case] = field(repr=False, compare=False)
    sources: tuple[Path, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, compare=False)

    def load(self) -> Case:
        return self.loader()
