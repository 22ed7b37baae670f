"""The raw ACDC release (MICCAI 2017 challenge): one folder per patient holding ``Info.cfg`` and
one NIfTI volume per cardiac frame; the annotated ED and ES frames become the cases.

On disk (``database/`` in the current release; older copies put ``training/`` and
``testing/`` at the top)::

    training/patient001/Info.cfg                    ED: 1 / ES: 12 / Group: DCM / Height / NbFrame / Weight
    training/patient001/patient001_4d.nii.gz        the whole cine (ignored)
    training/patient001/patient001_frame01.nii.gz   ED volume
    training/patient001/patient001_frame01_gt.nii.gz
    training/patient001/patient001_frame12.nii.gz   ES volume
    training/patient001/patient001_frame12_gt.nii.gz
    testing/patient101/...                          same; ``_gt`` may be absent (unlabeled)

Case ids are ``patientXXX_frameYY`` (the raw frame number), the patient id is ``patientXXX``.
Labels: 0 background, 1 RV, 2 MYO (myocardium), 3 LV.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from cctr.seg.data.case import CaseError, CaseRef
from cctr.seg.data.dataset import Dataset, folder_split
from cctr.seg.data.known_splits import known_split_if_covered
from cctr.seg.data.nifti import load_nifti_case

ACDC_CLASSES = ("background", "RV", "MYO", "LV")
LAYOUT = "acdc"
_PATIENT = re.compile(r"^patient\d{3}$")
# Where patient folders may sit below the folder the user points at.
_PARENTS = ("", "training", "testing", "database/training", "database/testing")


def patient_folders(root: Path) -> list[Path]:
    """Every ``patientXXX`` folder holding an ``Info.cfg`` in the places a copy of ACDC puts them."""
    found: list[Path] = []
    for parent in _PARENTS:
        base = root / parent if parent else root
        if base.is_dir():
            found.extend(
                p for p in sorted(base.iterdir()) if p.is_dir() and _PATIENT.match(p.name) and (p / "Info.cfg").is_file()
            )
    return found


def looks_like(root: Path) -> bool:
    return bool(patient_folders(root))


def read_info_cfg(path: Path) -> dict[str, str]:
    """``Info.cfg`` as a dict of its ``key: value`` lines."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{path}: cannot read ({exc})") from exc
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def ed_es_frames(info: dict[str, str], path: Path) -> tuple[int, int]:
    """The ED and ES frame numbers of an ``Info.cfg``; :class:`CaseError` naming it if either is missing or bad."""
    missing = [k for k in ("ED", "ES") if k not in info]
    if missing:
        raise CaseError(f"{path}: no {' or '.join(missing)} entry; ACDC's Info.cfg must give both, e.g. 'ED: 1' and 'ES: 12'")
    frames = []
    for key in ("ED", "ES"):
        try:
            frame = int(float(info[key]))
        except ValueError:
            raise CaseError(f"{path}: {key} must be a frame number, got {info[key]!r}") from None
        if frame < 1:
            raise CaseError(f"{path}: {key} must be a frame number >= 1, got {frame}")
        frames.append(frame)
    if frames[0] == frames[1]:
        raise CaseError(f"{path}: ED and ES name the same frame {frames[0]}")
    return frames[0], frames[1]


def read_acdc(root: Path) -> Dataset:
    """Index a raw ACDC copy (training and, if present, testing patients) without reading volumes.

    The default split is ``split.json`` in ``root`` if there is one, else the SSL4MIS split
    (:data:`seg.data.known_splits.ACDC_SPLIT`) when all its 100 patients are present.
    """
    root = Path(root)
    folders = patient_folders(root)
    if not folders:
        raise CaseError(f"{root}: no ACDC patientXXX/ folders with an Info.cfg")
    refs: list[CaseRef] = []
    for folder in folders:
        cfg = folder / "Info.cfg"
        info = read_info_cfg(cfg)
        ed, es = ed_es_frames(info, cfg)
        pid = folder.name
        for phase, frame in (("ED", ed), ("ES", es)):
            case_id = f"{pid}_frame{frame:02d}"
            image = folder / f"{case_id}.nii.gz"
            if not image.is_file():
                raise CaseError(f"{image}: missing; {cfg} names frame {frame} as {phase}")
            gt = folder / f"{case_id}_gt.nii.gz"
            label = gt if gt.is_file() else None
            meta = {"phase": phase, "frame": str(frame), "subset": folder.parent.name}
            if "Group" in info:
                meta["group"] = info["Group"]
            refs.append(
                CaseRef(
                    case_id=case_id,
                    patient_id=pid,
                    has_label=label is not None,
                    loader=partial(load_nifti_case, case_id, pid, image, label, ACDC_CLASSES),
                    sources=(image,) if label is None else (image, label),
                    meta=meta,
                )
            )
    patients = tuple(dict.fromkeys(r.patient_id for r in refs))
    split = folder_split(root, patients, known_split_if_covered("acdc", patients))
    return Dataset(layout=LAYOUT, root=root, refs=tuple(refs), class_names=ACDC_CLASSES, default_split=split)
