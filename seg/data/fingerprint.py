"""The fingerprint of a dataset: what its training cases look like, measured once.

Geometry (voxel spacing, shape, field of view in mm, which axis is the low-resolution one,
the centred box that holds the labelled anatomy), intensities (percentiles, mean and std of
all voxels and of labelled foreground voxels, and whether the values look like CT Hounsfield
units or like MR magnitudes) and class sizes. Every case is read once; intensity statistics
use a fixed random subsample of voxels per case, so 100 volumes take seconds.

Arrays follow the case model: (Z, Y, X), spacing (z, y, x) mm. The plan built from this
(:mod:`joint.plan`) turns it into registration and student settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from cctr.seg.config import to_dict
from cctr.seg.data.case import Case, CaseRef
from cctr.seg.data.dataset import Dataset

Triple = tuple[float, float, float]
SAMPLES_PER_CASE = 20000  # voxels drawn per case for intensity statistics
ROI_PERCENTILE = 90.0  # the labelled-anatomy box holds the foreground of this share of cases
CT_AIR_HU = -500.0  # below this only air, lung or CT padding lie; MR magnitudes are >= 0
PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5)
CT_NAMES = ("ct", "cta", "pet-ct")  # channel names that say CT in nnU-Net's dataset.json


@dataclass(frozen=True)
class IntensityStats:
    percentiles: dict[str, float]  # "0.5", "1", "50", "99", "99.5" -> value
    mean: float
    std: float

    @staticmethod
    def of(values: np.ndarray) -> Optional["IntensityStats"]:
        if values.size == 0:
            return None
        pct = np.percentile(values, PERCENTILES)
        return IntensityStats({f"{p:g}": float(v) for p, v in zip(PERCENTILES, pct)}, float(values.mean()), float(values.std()))


@dataclass(frozen=True)
class Fingerprint:
    cases: int
    labeled: int
    class_names: tuple[str, ...]
    spacing_median: Triple  # (z, y, x) mm
    spacing_min: Triple
    spacing_max: Triple
    shape_median: Triple  # (Z, Y, X) voxels
    shape_min: tuple[int, int, int]
    shape_max: tuple[int, int, int]
    fov_median_mm: Triple  # (z, y, x) shape x spacing
    roi_mm: Optional[Triple]  # centred box holding the foreground of ROI_PERCENTILE % of labelled cases
    low_res_axis: int  # array axis (0 = Z) with the largest median spacing
    anisotropy: float  # largest / smallest median spacing
    intensity: IntensityStats  # all voxels (subsampled)
    foreground_intensity: Optional[IntensityStats]  # labelled foreground voxels (subsampled)
    modality: str  # 'ct-like' | 'mr-like'
    modality_reason: str
    class_fractions: tuple[float, ...]  # voxel share per class over labelled cases
    seconds: float  # time taken to compute it

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Fingerprint":
        data = dict(d)
        for key in ("intensity", "foreground_intensity"):
            if data.get(key) is not None:
                data[key] = IntensityStats(**data[key])
        for key, value in list(data.items()):
            if isinstance(value, list):
                data[key] = tuple(value)
        return Fingerprint(**data)


def centred_extent(label_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> Optional[Triple]:
    """mm per axis of the smallest box centred on the volume's centre that holds every
    foreground voxel (grids are centred on the volume, so this is what one must cover);
    None when there is no foreground."""
    fg = np.asarray(label_zyx) > 0
    if not fg.any():
        return None
    out = []
    for axis, (n, s) in enumerate(zip(fg.shape, spacing_zyx)):
        present = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        reach = max(abs(present[0] - (n - 1) / 2.0), abs(present[-1] - (n - 1) / 2.0))
        out.append(float((2.0 * reach + 1.0) * s))
    return tuple(out)  # type: ignore[return-value]


def modality_of(values: np.ndarray, hint: Optional[str]) -> tuple[str, str]:
    """('ct-like' | 'mr-like', why). A channel name saying CT decides; otherwise the values:
    CT stores Hounsfield units, where air and padding lie at -1000, MR magnitudes are >= 0."""
    if hint is not None and hint.strip().lower() in CT_NAMES:
        return "ct-like", f"channel name {hint!r}"
    share_air = float((values < CT_AIR_HU).mean()) if values.size else 0.0
    if share_air >= 0.01:
        return "ct-like", f"{100 * share_air:.1f}% of voxels below {CT_AIR_HU:g} (air in Hounsfield units)"
    return "mr-like", f"{100 * share_air:.1f}% of voxels below {CT_AIR_HU:g}" + (f"; channel name {hint!r}" if hint else "")


def channel_hint(dataset: Dataset) -> Optional[str]:
    """The name of channel 0 in an nnU-Net ``dataset.json`` ('CT', 'T2', ...), if any."""
    path = Path(dataset.root) / "dataset.json"
    if dataset.layout != "nnunet" or not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    channels = meta.get("channel_names", meta.get("modality")) if isinstance(meta, dict) else None
    if isinstance(channels, Mapping):
        name = channels.get("0", channels.get(0))  # type: ignore[call-overload]
        return str(name) if name is not None else None
    return None


def fingerprint_cases(cases: Iterable[Case], class_names: Sequence[str], hint: Optional[str] = None, seed: int = 0) -> Fingerprint:
    """The fingerprint of already loaded (or lazily loading) cases; each is looked at once."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    shapes, spacings, rois, samples, fg_samples = [], [], [], [], []
    counts = np.zeros(len(class_names), dtype=np.int64)
    labeled = 0
    for case in cases:
        shapes.append(case.shape)
        spacings.append(case.spacing)
        flat = case.image.reshape(-1)
        pick = rng.integers(0, flat.size, size=min(SAMPLES_PER_CASE, flat.size))
        samples.append(flat[pick])
        if case.label is not None:
            labeled += 1
            counts += np.bincount(case.label.reshape(-1), minlength=len(counts))[: len(counts)]
            roi = centred_extent(case.label, case.spacing)
            if roi is not None:
                rois.append(roi)
            fg = flat[case.label.reshape(-1) > 0]
            if fg.size:
                fg_samples.append(fg[rng.integers(0, fg.size, size=min(SAMPLES_PER_CASE, fg.size))])
    if not shapes:
        raise ValueError("fingerprint: no cases to measure")
    shape_arr = np.asarray(shapes, dtype=np.float64)
    sp_arr = np.asarray(spacings, dtype=np.float64)
    spacing_median = np.median(sp_arr, axis=0)
    values = np.concatenate(samples).astype(np.float64)
    fg_values = np.concatenate(fg_samples).astype(np.float64) if fg_samples else np.zeros(0)
    modality, why = modality_of(values, hint)
    total = counts.sum()

    def triple(a: np.ndarray) -> Triple:
        return tuple(float(v) for v in a)  # type: ignore[return-value]

    return Fingerprint(
        cases=len(shapes),
        labeled=labeled,
        class_names=tuple(class_names),
        spacing_median=triple(spacing_median),
        spacing_min=triple(sp_arr.min(axis=0)),
        spacing_max=triple(sp_arr.max(axis=0)),
        shape_median=triple(np.median(shape_arr, axis=0)),
        shape_min=tuple(int(v) for v in shape_arr.min(axis=0)),  # type: ignore[arg-type]
        shape_max=tuple(int(v) for v in shape_arr.max(axis=0)),  # type: ignore[arg-type]
        fov_median_mm=triple(np.median(shape_arr * sp_arr, axis=0)),
        roi_mm=triple(np.percentile(np.asarray(rois), ROI_PERCENTILE, axis=0)) if rois else None,
        low_res_axis=int(np.argmax(spacing_median)),
        anisotropy=float(spacing_median.max() / spacing_median.min()),
        intensity=IntensityStats.of(values),  # type: ignore[arg-type]
        foreground_intensity=IntensityStats.of(fg_values),
        modality=modality,
        modality_reason=why,
        class_fractions=tuple(float(c / total) for c in counts) if total else tuple(0.0 for _ in counts),
        seconds=time.perf_counter() - start,
    )


def fingerprint(dataset: Dataset, patients: Optional[Iterable[str]] = None,
                labeled: Iterable[str] = ()) -> Fingerprint:
    """The fingerprint of the cases of ``patients`` (None: every case), each read once; the
    labels of the ``labeled`` patients only are looked at (a user who labeled those has nothing
    else: the labels of the other volumes never reach the plan)."""
    refs: Sequence[CaseRef] = dataset.refs if patients is None else dataset.of_patients(patients)
    known = set(labeled)

    def load(ref: CaseRef) -> Case:
        case = ref.load()
        return case if ref.patient_id in known else case.with_label(None)

    return fingerprint_cases((load(r) for r in refs), dataset.class_names, channel_hint(dataset))
