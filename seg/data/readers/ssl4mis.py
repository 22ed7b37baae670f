"""SSL4MIS's release of ACDC (HiLab-git/SSL4MIS, ``data/ACDC``): HDF5 files holding arrays
without geometry.

On disk::

    data/patient001_frame01.h5            volume: 'image' float32 (Z, Y, X) min-max scaled to [0, 1],
    data/patient001_frame02.h5                    'label' (Z, Y, X) 0 bg, 1 RV, 2 MYO, 3 LV
    data/slices/patient001_frame01_slice_N.h5   one (Y, X) slice of a training volume
    train.list  val.list  test.list       volume names, one per line
    train_slices.list                     slice names, one per line

The two annotated frames of each patient are renumbered ``frame01`` and ``frame02`` in the
order of their raw frame numbers (the raw release's ED is usually frame 1, so frame01 is
usually ED); case ids keep those names, the patient id is ``patientXXX``. Volumes are read
from ``data/``; a volume present only as slices is stacked back in slice-number order.

No spacing is stored. The ``spacing`` option (z, y, x) defaults to ``(1, 1, 1)``: distances
such as HD95 are then in voxels, as SSL4MIS itself reports them. ``spacing_from=`` a raw ACDC
folder takes each volume's real spacing, affine and header from the matching raw frame.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cctr.seg.data.case import Case, CaseError, CaseRef
from cctr.seg.data.dataset import Dataset, folder_split
from cctr.seg.data.known_splits import ACDC_LABELED_SIZES, known_split_if_covered
from cctr.seg.data.nifti import read_nifti_geometry
from cctr.seg.data.readers.acdc import ACDC_CLASSES, ed_es_frames, patient_folders, read_info_cfg
from cctr.seg.data.readers.arrays import (Spacing, SpacingOption, array_case, list_file_names, numbered_files, read_arrays,
                                     spacing_lookup, stack_slices)
from cctr.seg.data.split import Split, split_with_prefix_sets

LAYOUT = "acdc-ssl4mis"
KEYS = {"image": ("image",), "label": ("label",)}
_VOLUME = re.compile(r"^(patient\d{3})_frame(\d{2})\.h5$")
_SLICE = re.compile(r"^(patient\d{3}_frame\d{2})_slice_(\d+)\.h5$")


def looks_like(root: Path) -> bool:
    data = root / "data"
    if not data.is_dir():
        return False
    return any(_VOLUME.match(p.name) for p in data.iterdir()) or (data / "slices").is_dir()


def _index_slices(slices_dir: Path) -> dict[str, list[Path]]:
    """Slice files of each volume, ordered by slice number; a gap in the numbers is an error."""
    out: dict[str, list[Path]] = {}
    for case_id, numbered in numbered_files(slices_dir, _SLICE).items():
        numbers = [n for n, _ in numbered]
        expected = list(range(numbers[0], numbers[0] + len(numbers)))
        if numbers != expected:
            gap = next(e for e, n in zip(expected, numbers) if e != n)
            raise CaseError(f"{slices_dir / f'{case_id}_slice_{gap}.h5'}: missing; slices of {case_id} must be numbered without gaps")
        out[case_id] = [p for _, p in numbered]
    return out


def _slice_pattern(slices_dir: Path, case_id: str) -> Path:
    """How messages name a volume stacked from its slice files."""
    return slices_dir / f"{case_id}_slice_*.h5"


def _raw_geometry(raw_root: Path) -> Callable[[str, str, tuple[int, ...]], tuple[Spacing, np.ndarray, object]]:
    """``(patient, 'frame01'|'frame02', shape) -> (spacing, affine, header)`` from a raw ACDC copy."""
    folders = {p.name: p for p in patient_folders(raw_root)}
    if not folders:
        raise CaseError(f"{raw_root}: spacing_from must be a raw ACDC folder (patientXXX/ with Info.cfg); none found")

    def geometry(patient: str, frame: str, shape: tuple[int, ...]) -> tuple[Spacing, np.ndarray, object]:
        if patient not in folders:
            raise CaseError(f"{raw_root}: no raw folder for {patient} to take its spacing from")
        cfg = folders[patient] / "Info.cfg"
        raw_frames = sorted(ed_es_frames(read_info_cfg(cfg), cfg))
        if frame not in ("frame01", "frame02"):
            raise CaseError(f"{cfg}: SSL4MIS names only frame01 and frame02, cannot match {patient}_{frame}")
        raw = raw_frames[0 if frame == "frame01" else 1]
        path = folders[patient] / f"{patient}_frame{raw:02d}.nii.gz"
        raw_shape, spacing, affine, header = read_nifti_geometry(path)
        if raw_shape != tuple(shape):
            raise CaseError(f"{path}: shape {raw_shape} differs from {shape} of the SSL4MIS volume {patient}_{frame}")
        return spacing, affine, header

    return geometry


def _load(
    case_id: str,
    patient: str,
    volume: Optional[Path],
    slices: list[Path],
    spacing: Callable[[str], Spacing],
    geometry: Optional[Callable[[str, str, tuple[int, ...]], tuple[Spacing, np.ndarray, object]]],
) -> Case:
    if volume is not None:
        arrays = read_arrays(volume, KEYS)
        sources = [volume]
    else:
        arrays = stack_slices(slices, KEYS)
        sources = [_slice_pattern(slices[0].parent, case_id)]
    image, label = arrays["image"], arrays["label"]
    if image.ndim != 3:
        raise CaseError(f"{sources[0]}: expected a 3D (Z, Y, X) image, got {image.ndim}D with shape {image.shape}")
    if geometry is None:
        return array_case(case_id, patient, image, label, spacing(case_id), sources, ACDC_CLASSES)
    sp, affine, header = geometry(patient, case_id.rsplit("_", 1)[1], image.shape)
    return array_case(case_id, patient, image, label, sp, sources, ACDC_CLASSES, affine=affine, header=header)


def _list_split(root: Path, patients: tuple[str, ...]) -> Optional[Split]:
    """The split the release's lists define, with labeled sets from the head of ``train.list``."""
    def patients_in(name: str) -> list[str]:
        path = root / name
        return [ln.split("_")[0] for ln in list_file_names(path)] if path.is_file() else []

    train = patients_in("train.list") or patients_in("train_slices.list")
    if not train:
        return None
    split = split_with_prefix_sets(train, tuple(dict.fromkeys(patients_in("val.list"))),
                                   tuple(dict.fromkeys(patients_in("test.list"))), ACDC_LABELED_SIZES)
    split.check_patients(patients, f"{root} (train/val/test lists)")
    return split


def read_ssl4mis(
    root: Path,
    *,
    spacing: Optional[SpacingOption] = None,
    spacing_from: Optional[Path] = None,
    use_lists: bool = True,
) -> Dataset:
    """Index SSL4MIS's ACDC folder without reading any array.

    ``spacing``: (z, y, x) for every volume, or ``{case_id: (z, y, x)}``; default ``(1, 1, 1)``.
    ``spacing_from``: a raw ACDC folder to take real geometry from (not with ``spacing``).
    ``use_lists``: build the default split from the release's lists (else the known split, if
    every patient of it is present). ``split.json`` in ``root`` overrides both.
    """
    root = Path(root)
    data = root / "data"
    if not data.is_dir():
        raise CaseError(f"{root}: no data/ folder; not an SSL4MIS ACDC release")
    if spacing is not None and spacing_from is not None:
        raise CaseError(f"{root}: give either spacing or spacing_from, not both")
    lookup = spacing_lookup((1.0, 1.0, 1.0) if spacing is None else spacing, f"{root}: spacing option")
    geometry = _raw_geometry(Path(spacing_from)) if spacing_from is not None else None

    volumes = {f"{m.group(1)}_frame{m.group(2)}": p for p in data.iterdir() if (m := _VOLUME.match(p.name))}
    slices = _index_slices(data / "slices")
    refs = []
    for case_id in sorted(set(volumes) | set(slices)):
        patient = case_id.split("_")[0]
        volume = volumes.get(case_id)
        refs.append(
            CaseRef(
                case_id=case_id,
                patient_id=patient,
                has_label=True,
                loader=partial(_load, case_id, patient, volume, slices.get(case_id, []), lookup, geometry),
                sources=(volume,) if volume is not None else (_slice_pattern(data / "slices", case_id),),
                meta={"frame": case_id.rsplit("frame", 1)[1]},
            )
        )
    if not refs:
        raise CaseError(f"{data}: no patientXXX_frameYY.h5 volumes or slices/ files")
    patients = tuple(dict.fromkeys(r.patient_id for r in refs))
    fallback = _list_split(root, patients) if use_lists else None
    if fallback is None:
        fallback = known_split_if_covered("acdc", patients)
    return Dataset(layout=LAYOUT, root=root, refs=tuple(refs), class_names=ACDC_CLASSES,
                   default_split=folder_split(root, patients, fallback))
