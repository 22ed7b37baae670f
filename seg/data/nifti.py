"""NIfTI read/write that keeps the affine and header, converting between NIfTI ``(X, Y, Z)``
arrays and the case model's ``(Z, Y, X)`` arrays (see :mod:`seg.data.case`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from seg.data.case import CaseError


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI volume.

    Returns ``(array (Z, Y, X) float64, spacing (z, y, x) mm, affine 4x4, header)``.
    Raises :class:`CaseError` naming ``path`` for a missing, corrupt or non-3D file.
    """
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CaseError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3D volume, got {data.ndim}D with shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[1], zooms[0])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, np.asarray(img.affine, dtype=float), img.header


def write_nifti(
    path: Path,
    array_zyx: np.ndarray,
    affine: np.ndarray,
    header: Optional[nib.Nifti1Header] = None,
) -> Path:
    """Write a ``(Z, Y, X)`` array as NIfTI with ``affine`` (and ``header`` if given), atomically.

    The file appears complete or not at all: it is written next to its target and renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.asarray(array_zyx).transpose(2, 1, 0))
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, header=hdr)
    img.set_data_dtype(data.dtype)
    if data.dtype == np.uint8:
        img.header.set_slope_inter(1, 0)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=str(path.parent))
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
