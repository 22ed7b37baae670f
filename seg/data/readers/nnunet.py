"""A folder in nnU-Net's raw layout: the way users bring their own data (and what the phantom writes).

On disk::

    dataset.json                  labels, channels, file ending, numTraining (+ cctr's patient_of)
    imagesTr/<case>_0000.nii.gz   labeled images (channel 0000)
    labelsTr/<case>.nii.gz        their label maps, same grid
    imagesTs/<case>_0000.nii.gz   optional, unlabeled unless labelsTs/<case>.nii.gz exists
    imagesUnlabeled/<case>_0000.nii.gz   optional, unlabeled
    split.json                    optional, see :mod:`seg.data.split`

``dataset.json`` may use nnU-Net v2's ``"labels": {"background": 0, "RV": 1}`` or v1's
``"labels": {"0": "background", "1": "RV"}``; label values must run 0..K-1. cctr adds
``"patient_of": {case_id: patient_id}`` so that cases of one patient (ED and ES frames)
share a patient id; a case it does not list is its own patient.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional

from cctr.seg.data.case import CaseError, CaseRef
from cctr.seg.data.dataset import Dataset, folder_split
from cctr.seg.data.nifti import NIFTI_SUFFIXES, load_nifti_case

LAYOUT = "nnunet"
DATASET_JSON = "dataset.json"
SUPPORTED_ENDINGS = NIFTI_SUFFIXES
# Folders of images without labels in nnU-Net's layout (imagesTs may have labelsTs).
_UNLABELED_DIRS = (("imagesTs", "labelsTs"), ("imagesUnlabeled", None))


def looks_like(root: Path) -> bool:
    return (root / DATASET_JSON).is_file() or (root / "imagesTr").is_dir()


def read_dataset_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CaseError(f"{path}: missing; an nnU-Net folder needs dataset.json with its label names")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CaseError(f"{path}: must hold a JSON object")
    return meta


def class_names_of(labels: Any, path: Path) -> tuple[str, ...]:
    """Class names ordered by label value, from a v2 ``{name: value}`` or v1 ``{"value": name}`` mapping."""
    if not isinstance(labels, Mapping) or not labels:
        raise CaseError(f"{path}: 'labels' must be a non-empty mapping of class names and values")
    by_value: dict[int, str] = {}
    v1 = all(isinstance(v, str) for v in labels.values())
    for key, value in labels.items():
        raw, name = (key, value) if v1 else (value, key)
        if isinstance(raw, (list, tuple)):
            raise CaseError(f"{path}: label {name!r} is a region (list of values); region labels are not supported")
        try:
            number = int(raw)
        except (TypeError, ValueError):
            raise CaseError(f"{path}: label {name!r} has value {raw!r}, not an integer") from None
        if number in by_value:
            raise CaseError(f"{path}: label value {number} is given twice ({by_value[number]!r}, {name!r})")
        by_value[number] = str(name)
    if sorted(by_value) != list(range(len(by_value))):
        raise CaseError(f"{path}: label values must run 0..{len(by_value) - 1} without gaps, got {sorted(by_value)}")
    return tuple(by_value[i] for i in range(len(by_value)))


def _images(folder: Path, ending: str, channel: int) -> dict[str, Path]:
    """Case id -> image file of ``channel`` in ``folder`` (``<case>_XXXX<ending>``)."""
    if not folder.is_dir():
        return {}
    tag = f"_{channel:04d}{ending}"
    return {p.name[: -len(tag)]: p for p in sorted(folder.iterdir()) if p.name.endswith(tag) and len(p.name) > len(tag)}


def _refuse_orphan_labels(labels_dir: Path, images: Mapping[str, Path], ending: str, channel: int,
                          images_dir: str) -> None:
    """CaseError naming the first label map in ``labels_dir`` whose case has no image."""
    orphans = sorted(p.name for p in labels_dir.iterdir() if p.name.endswith(ending) and p.name[: -len(ending)] not in images)
    if orphans:
        raise CaseError(f"{labels_dir / orphans[0]}: label map without an image "
                        f"{orphans[0][: -len(ending)]}_{channel:04d}{ending} in {images_dir}/")


def _refuse_mixed_endings(root: Path, ending: str, meta_path: Path) -> None:
    """CaseError naming the first NIfTI file whose ending is not dataset.json's ``file_ending``
    (it would be skipped, and only a count mismatch would show)."""
    other = next(e for e in SUPPORTED_ENDINGS if e != ending)
    for folder in ("imagesTr", "labelsTr", *(d for pair in _UNLABELED_DIRS for d in pair if d)):
        if not (root / folder).is_dir():
            continue
        odd = sorted(p.name for p in (root / folder).iterdir() if p.name.endswith(other))
        if odd:
            raise CaseError(f"{root / folder / odd[0]}: ends in {other} but {meta_path} says file_ending {ending!r}; "
                            f"{folder}/ mixes {other} and {ending} files ({len(odd)} file(s) end in {other}): "
                            "give every file one ending")


def read_nnunet(root: Path, *, channel: int = 0) -> Dataset:
    """Index an nnU-Net raw folder without reading any volume.

    ``channel``: which input channel (``_0000``, ``_0001``, ...) is the image.
    """
    root = Path(root)
    meta_path = root / DATASET_JSON
    meta = read_dataset_json(meta_path)
    class_names = class_names_of(meta.get("labels"), meta_path)
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in SUPPORTED_ENDINGS:
        raise CaseError(f"{meta_path}: file_ending {ending!r} is not supported; use one of {SUPPORTED_ENDINGS}")
    channels = meta.get("channel_names", meta.get("modality", {"0": "image"}))
    if not isinstance(channels, Mapping) or str(channel) not in {str(k) for k in channels}:
        raise CaseError(f"{meta_path}: channel {channel} is not among its channels {channels!r}")
    patient_of = meta.get("patient_of", {})
    if not isinstance(patient_of, Mapping) or not all(isinstance(v, str) for v in patient_of.values()):
        raise CaseError(f"{meta_path}: 'patient_of' must map case ids to patient id strings")

    _refuse_mixed_endings(root, ending, meta_path)
    entries: list[tuple[str, Path, Optional[Path], str]] = []
    labeled = _images(root / "imagesTr", ending, channel)
    labels_dir = root / "labelsTr"
    for case_id, image in labeled.items():
        label = labels_dir / f"{case_id}{ending}"
        if not label.is_file():
            raise CaseError(f"{label}: missing; every image in imagesTr/ needs its label map in labelsTr/")
        entries.append((case_id, image, label, "imagesTr"))
    if labels_dir.is_dir():
        _refuse_orphan_labels(labels_dir, labeled, ending, channel, "imagesTr")
    expected = meta.get("numTraining")
    if expected is not None and expected != len(labeled):
        raise CaseError(f"{meta_path}: numTraining is {expected} but imagesTr/ holds {len(labeled)} cases")
    for images_dir, labels_name in _UNLABELED_DIRS:
        images = _images(root / images_dir, ending, channel)
        for case_id, image in images.items():
            label = root / labels_name / f"{case_id}{ending}" if labels_name else None
            entries.append((case_id, image, label if label is not None and label.is_file() else None, images_dir))
        if labels_name and (root / labels_name).is_dir():
            # a test label whose image is misnamed would otherwise leave its case silently unlabeled
            _refuse_orphan_labels(root / labels_name, images, ending, channel, images_dir)
    if not entries:
        raise CaseError(f"{root}: no images named <case>_{channel:04d}{ending} in imagesTr/, imagesTs/ or imagesUnlabeled/")

    case_ids = {e[0] for e in entries}
    unknown = sorted(set(patient_of) - case_ids)
    if unknown:
        raise CaseError(f"{meta_path}: patient_of names cases that have no image: {unknown[:10]}")
    refs = tuple(
        CaseRef(
            case_id=case_id,
            patient_id=patient_of.get(case_id, case_id),
            has_label=label is not None,
            loader=partial(load_nifti_case, case_id, patient_of.get(case_id, case_id), image, label, class_names),
            sources=(image,) if label is None else (image, label),
            meta={"subset": subset},
        )
        for case_id, image, label, subset in entries
    )
    patients = tuple(dict.fromkeys(r.patient_id for r in refs))
    return Dataset(layout=LAYOUT, root=root, refs=refs, class_names=class_names,
                   default_split=folder_split(root, patients))
