"""Arrays without geometry: the HDF5 (``.h5``) and NumPy (``.npz``) files of the SSL4MIS and
TransUNet releases, slices stacked back into volumes, and the user-given spacing that
stands in for the geometry these files lack."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import h5py
import numpy as np

from cctr.seg.data.case import Case, CaseError, label_to_uint8, spacing_affine

Spacing = tuple[float, float, float]
# One (z, y, x) spacing in mm for every case, or one per case id.
SpacingOption = Union[Sequence[float], Mapping[str, Sequence[float]]]


def check_spacing(value: object, where: str) -> Spacing:
    """``value`` as a (z, y, x) tuple of three positive finite numbers, or :class:`CaseError`."""
    try:
        sp = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise CaseError(f"{where}: spacing must be three numbers (z, y, x) in mm, got {value!r}") from None
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise CaseError(f"{where}: spacing must be three positive numbers (z, y, x) in mm, got {value!r}")
    return sp  # type: ignore[return-value]


def spacing_lookup(option: SpacingOption, where: str) -> Callable[[str], Spacing]:
    """Validate a ``spacing`` reader option now and return ``case_id -> spacing``.

    A mapping must name every case it is asked about; a missing case is an error at load
    time rather than a silent fallback to some default.
    """
    if isinstance(option, Mapping):
        table = {str(k): check_spacing(v, f"{where}: spacing of {k!r}") for k, v in option.items()}

        def lookup(case_id: str) -> Spacing:
            if case_id not in table:
                raise CaseError(f"{where}: the spacing option gives no spacing for case {case_id!r}")
            return table[case_id]

        return lookup
    fixed = check_spacing(option, where)
    return lambda case_id: fixed


def read_arrays(path: Path, keys: Mapping[str, Sequence[str]], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read named arrays from an ``.h5`` or ``.npz`` file.

    ``keys`` maps a role (``'image'``) to the key names a release may use for it, first
    match wins (``('image', 'img')``). Roles in ``optional`` may be absent; any other
    missing role, or an unreadable file, raises :class:`CaseError` naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return _pick(path, list(npz.files), lambda k: npz[k], keys, optional)
        with h5py.File(path, "r") as h5:
            return _pick(path, list(h5.keys()), lambda k: h5[k][()], keys, optional)
    except CaseError:
        raise
    except Exception as exc:  # zip, HDF5 and pickle errors all mean the file is unusable
        raise CaseError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _pick(
    path: Path,
    present: Sequence[str],
    get: Callable[[str], np.ndarray],
    keys: Mapping[str, Sequence[str]],
    optional: Sequence[str],
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for role, names in keys.items():
        name = next((n for n in names if n in present), None)
        if name is None:
            if role in optional:
                continue
            raise CaseError(f"{path}: no {' or '.join(map(repr, names))} array (the file holds {sorted(present)})")
        out[role] = np.asarray(get(name))
    return out


def numbered_files(folder: Path, pattern: "re.Pattern[str]") -> dict[str, list[tuple[int, Path]]]:
    """The files of ``folder`` whose names match ``pattern`` (groups: case id, slice number),
    per case and sorted by number; each reader checks its own numbering rule on them."""
    by_case: dict[str, list[tuple[int, Path]]] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            m = pattern.match(entry.name)
            if m:
                by_case.setdefault(m.group(1), []).append((int(m.group(2)), entry))
    return {case_id: sorted(numbered) for case_id, numbered in by_case.items()}


def stack_slices(slice_paths: Sequence[Path], keys: Mapping[str, Sequence[str]], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read 2D ``(Y, X)`` slices, in the given order, and stack each role into ``(Z, Y, X)``."""
    if not slice_paths:
        raise CaseError("no slice files to stack")
    stacks: dict[str, list[np.ndarray]] = {}
    first_shape: Optional[tuple[int, ...]] = None
    for path in slice_paths:
        arrays = read_arrays(path, keys, optional)
        for role, arr in arrays.items():
            if arr.ndim != 2:
                raise CaseError(f"{path}: {role} slice must be 2D (Y, X), got shape {arr.shape}")
            if first_shape is None:
                first_shape = arr.shape
            elif arr.shape != first_shape:
                raise CaseError(
                    f"{path}: {role} slice shape {arr.shape} differs from {first_shape} of {slice_paths[0]}; "
                    "slices of one volume must share a shape"
                )
            stacks.setdefault(role, []).append(arr)
    missing = [r for r, s in stacks.items() if len(s) != len(slice_paths)]
    if missing:
        raise CaseError(f"{slice_paths[0].parent}: {missing} present in only some slices of one volume")
    return {role: np.stack(s) for role, s in stacks.items()}


def array_case(
    case_id: str,
    patient_id: str,
    image: np.ndarray,
    label: Optional[np.ndarray],
    spacing: Spacing,
    sources: Sequence[Path],
    class_names: Sequence[str],
    affine: Optional[np.ndarray] = None,
    header: object = None,
) -> Case:
    """A validated case from ``(Z, Y, X)`` arrays; the affine, unless given, is the
    axis-aligned one of ``spacing`` (these formats carry no geometry)."""
    where = ", ".join(str(p) for p in sources)
    image = np.asarray(image)
    if image.ndim != 3:
        raise CaseError(f"{where}: expected a 3D (Z, Y, X) image, got {image.ndim}D with shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number):
        raise CaseError(f"{where}: image must be numeric, got dtype {image.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise CaseError(f"{where}: image has {bad} NaN or inf voxel(s)")
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape:
            raise CaseError(f"{where}: label shape {label.shape} does not match image shape {image.shape}")
        label = label_to_uint8(label, where, len(class_names))
    return Case(
        case_id=case_id,
        patient_id=patient_id,
        image=image.astype(np.float32),
        label=label,
        spacing=spacing,
        affine=spacing_affine(spacing) if affine is None else affine,
        sources=tuple(Path(p) for p in sources),
        class_names=tuple(class_names),
        header=header,
    )


def list_file_names(path: Path) -> list[str]:
    """Non-empty, stripped lines of a release's list file (``train.list``, ``test_vol.txt``)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{path}: cannot read list file ({exc})") from exc
    return [ln.strip() for ln in lines if ln.strip()]
