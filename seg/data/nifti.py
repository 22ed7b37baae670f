"""NIfTI read/write that keeps the affine and header, converting between NIfTI ``(X, Y, Z)``
arrays and the case model's ``(Z, Y, X)`` arrays (see :mod:`seg.data.case`), and the one way
an image/label pair of NIfTI files becomes a :class:`~seg.data.case.Case`.

Every volume is read in the closest canonical orientation (:mod:`seg.data.orientation`): the
array, spacing and affine returned describe the same world grid as the file, reoriented; the
header returned is the file's own, so :func:`write_nifti` puts a label map computed on the
canonical array back into the file's storage and affine."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

from cctr.seg.atomic import atomic_path
from cctr.seg.data.case import Case, CaseError, label_to_uint8
from cctr.seg.data.orientation import canonical, stored_orientation

# Image and label affines may differ by float noise from the writer, not by geometry.
# the file endings read as NIfTI, longest first so a stem strips cleanly
NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_ATOL_MM = 1e-3


def _load(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise CaseError(f"{path}: file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CaseError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc


def _spacing_zyx(img: nib.Nifti1Image, path: Path) -> tuple[float, float, float]:
    # nibabel silently replaces zero pixdims by 1 and negative ones by their absolute value
    # when it loads a header, so the header is read again unrepaired to see what the file says.
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        pixdim = tuple(float(v) for v in raw["pixdim"][1:4])
    except Exception as exc:
        raise CaseError(f"{path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from exc
    if not all(np.isfinite(pixdim)) or min(pixdim) <= 0:
        raise CaseError(f"{path}: voxel spacing (pixdim) must be three positive values, got {pixdim} (x, y, z)")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return (zooms[2], zooms[1], zooms[0])


def _shape_3d(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    # A trailing singleton 4th axis is a 3D volume written by tools that always write 4D.
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise CaseError(f"{path}: expected a 3D volume, got {len(shape)}D with shape {tuple(shape)}")
    x, y, z = (int(s) for s in shape)
    return (z, y, x)


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI volume in the closest canonical orientation.

    Returns ``(array (Z, Y, X) in the file's dtype (float64 when the header scales it),
    spacing (z, y, x) mm, affine 4x4, header)``: array, spacing and affine reoriented to
    canonical, the header the file's own. Raises :class:`CaseError` naming ``path`` for a
    missing, corrupt or non-3D file, or one whose voxel spacing is not positive.
    """
    path = Path(path)
    img = _load(path)
    _shape_3d(img.shape, path)
    spacing = _spacing_zyx(img, path)
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # truncated or corrupt compressed data surfaces only here
        raise CaseError(f"{path}: cannot read voxel data ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4:
        data = data[..., 0]
    data, affine, zooms = canonical(data, np.asarray(img.affine, dtype=float), spacing[::-1])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), (zooms[2], zooms[1], zooms[0]), affine, img.header


def read_nifti_geometry(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray, nib.Nifti1Header]:
    """``(shape (Z, Y, X), spacing (z, y, x) mm, affine, header)`` of a 3D NIfTI as stored (not
    reoriented: for arrays released in the file's own storage, such as SSL4MIS's h5 volumes),
    without reading its voxels."""
    path = Path(path)
    img = _load(path)
    return _shape_3d(img.shape, path), _spacing_zyx(img, path), np.asarray(img.affine, dtype=float), img.header


def load_nifti_case(
    case_id: str,
    patient_id: str,
    image_path: Path,
    label_path: Optional[Path],
    class_names: Sequence[str],
) -> Case:
    """Read an image (and its label map, if any) into a validated :class:`Case`.

    The label must lie on the image's grid: same shape and the same affine (to
    ``AFFINE_ATOL_MM``); its values must be integers naming one of ``class_names``.
    """
    image_path = Path(image_path)
    image, spacing, affine, header = read_nifti(image_path)
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise CaseError(f"{image_path}: image has {bad} NaN or inf voxel(s)")
    label = None
    sources: tuple[Path, ...] = (image_path,)
    if label_path is not None:
        label_path = Path(label_path)
        sources = (image_path, label_path)
        raw, _, label_affine, _ = read_nifti(label_path)
        if raw.shape != image.shape:
            raise CaseError(
                f"{label_path}: label shape {raw.shape} (Z, Y, X) does not match the shape "
                f"{image.shape} of its image {image_path}"
            )
        diff = float(np.abs(label_affine - affine).max())
        if diff > AFFINE_ATOL_MM:
            raise CaseError(
                f"{label_path}: label affine differs from the affine of its image {image_path} "
                f"by up to {diff:.4g} mm; they must describe the same grid"
            )
        label = label_to_uint8(raw, str(label_path), len(class_names))
    return Case(
        case_id=case_id,
        patient_id=patient_id,
        image=image.astype(np.float32),
        label=label,
        spacing=spacing,
        affine=affine,
        sources=sources,
        class_names=tuple(class_names),
        header=header,
    )


def write_nifti(
    path: Path,
    array_zyx: np.ndarray,
    affine: np.ndarray,
    header: Optional[nib.Nifti1Header] = None,
) -> Path:
    """Write a ``(Z, Y, X)`` array as NIfTI with ``affine`` (and ``header`` if given), atomically.

    When ``header`` is that of a file :func:`read_nifti` reoriented and ``array_zyx`` lies on
    its canonical grid, the array is written back in the file's own storage and affine. The
    file appears complete or not at all: it is written next to its target and renamed.
    """
    path = Path(path)
    array = np.asarray(array_zyx)
    if array.ndim != 3:
        raise ValueError(f"{path}: write_nifti takes a 3D (Z, Y, X) array, got shape {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(array.transpose(2, 1, 0))
    if header is not None:
        back = stored_orientation(data, np.asarray(affine, dtype=float), header.get_best_affine(),
                                  header.get_data_shape())
        if back is not None:
            data, affine = back
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, header=hdr)
    img.set_data_dtype(data.dtype)
    if data.dtype == np.uint8:
        img.header.set_slope_inter(1, 0)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path
