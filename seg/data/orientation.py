"""One orientation for every NIfTI volume cctr reads, and back to the file's own on write.

Scans arrive stored in every orientation: the same anatomy flipped along x, or with its axes
permuted, under an affine that says so. A slice-wise student sees the array, not the world,
so it would segment a flipped copy of its training data (RV Dice 0.91 -> 0.00). Every volume
is therefore read in nibabel's closest canonical orientation (RAS+: array axes ``(x, y, z)``
run, as nearly as the affine allows, left->Right, posterior->Anterior,
inferior->Superior), as the field's pipelines do, so training and prediction see one
orientation; a file already stored that way (the phantoms, most converted data) is read
unchanged.

A label map written for an input goes back to that input's own storage: the input's header
records its affine and shape, and :func:`stored_orientation` undoes the reorientation, so the
output overlays the input voxel for voxel in any viewer.

Orientation arrays are nibabel's: row ``i`` says which canonical axis stored axis ``i``
becomes and whether it is flipped.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
AFFINE_ATOL_MM = 1e-3   # affines equal up to a writer's float noise describe the same grid


def is_identity(ornt: np.ndarray) -> bool:
    return bool(np.array_equal(ornt, IDENTITY))


def canonical(data_xyz: np.ndarray, affine: np.ndarray,
              zooms_xyz: Sequence[float]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A NIfTI array ``(X, Y, Z)``, its affine and voxel sizes, in the closest canonical
    orientation; unchanged (the same objects) when already canonical."""
    ornt = io_orientation(affine)
    if is_identity(ornt):
        return data_xyz, affine, tuple(float(z) for z in zooms_xyz)  # type: ignore[return-value]
    data = np.ascontiguousarray(apply_orientation(data_xyz, ornt))
    new_affine = affine @ inv_ornt_aff(ornt, data_xyz.shape[:3])
    zooms = [0.0, 0.0, 0.0]
    for stored, (axis, _) in enumerate(ornt):
        zooms[int(axis)] = float(zooms_xyz[stored])
    return data, new_affine, (zooms[0], zooms[1], zooms[2])


def stored_orientation(data_xyz: np.ndarray, affine: np.ndarray, stored_affine: np.ndarray,
                       stored_shape: Sequence[int]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(array, affine)`` of a canonical ``data_xyz`` on ``affine`` put back into the storage
    whose affine and shape are ``stored_*``, when ``data_xyz`` is that storage's canonical
    form; ``None`` otherwise (the caller writes what it was given)."""
    ornt = io_orientation(stored_affine)
    if is_identity(ornt):
        return None
    canonical_affine = stored_affine @ inv_ornt_aff(ornt, tuple(stored_shape[:3]))
    canonical_shape = tuple(int(stored_shape[int(np.flatnonzero(ornt[:, 0] == j)[0])]) for j in range(3))
    if data_xyz.shape[:3] != canonical_shape or not np.allclose(affine, canonical_affine, atol=AFFINE_ATOL_MM):
        return None
    back = ornt_transform(IDENTITY, ornt)
    return np.ascontiguousarray(apply_orientation(data_xyz, back)), stored_affine


def obliquity_deg(affine: np.ndarray) -> float:
    """How far the voxel axes of ``affine`` turn away from the nearest world axes, in degrees
    (0 for an axis-aligned grid, flipped or permuted or not)."""
    columns = np.asarray(affine, dtype=float)[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if not np.all(norms > 0):
        return 0.0
    cosines = np.abs(columns / norms).max(axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
