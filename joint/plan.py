"""The plan of a dataset: its fingerprint (:mod:`seg.data.fingerprint`) and the settings derived
from it for registration (:mod:`reg.plan`) and for the students, stored once per dataset.

File: ``DATA/cctr_plan.json`` (next to ``split.json``), written atomically::

    {"version": 2,
     "patients": [...],            training patients it was measured on (sorted)
     "labeled": [...],             the labeled patients whose labels it read (sorted; none: [])
     "rules": {...},               reg.plan.PlanRules used
     "fingerprint": {...},         seg.data.fingerprint.Fingerprint
     "reg": {"grid": {...}, "prealign": {...}, "ncc_window": [z, y, x], "smoothness_weight": w,
             "thick_slices": bool, "extent_mm": [z, y, x]},
     "student": {"slice_axis": 0, "slice_axis_name": "...", "image_size": [h, w],
                 "normalization": "zscore" | "clip-zscore", "window": [lo, hi] | null}}

:func:`plan_for` reads the images of every training patient and the labels of the run's labeled
set only (the labelled-anatomy box, class sizes and the CT window come from those): the labels
of the volumes a run treats as unlabeled never reach it. It reuses the file when it was
measured on the same training and labeled patients with the same rules and version, and
otherwise measures again and rewrites it; when the folder cannot be written the plan is still
returned. Commands apply it only where the user gave no configuration, and every planned value
stays overridable (``--set``, YAML).
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from cctr.reg.config import RegConfig
from cctr.reg.grid import CanonicalGrid
from cctr.reg.placement import FrontEnd
from cctr.reg.plan import DatasetGeometry, PlanRules, RegPlan, apply_plan, plan_registration
from cctr.reg.prealign import PrealignConfig
from cctr.seg.atomic import write_json
from cctr.seg.config import to_dict
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.fingerprint import Fingerprint, fingerprint
from cctr.seg.data.split import Split

PLAN_FILENAME = "cctr_plan.json"
PLAN_VERSION = 2
AXIS_NAMES = ("Z (array axis 0)", "Y (array axis 1)", "X (array axis 2)")
STUDENT_MIN_SIZE = 64   # the smallest input both students take (Swin: multiples of 32, more than 32x32)
STUDENT_MAX_SIZE = 64  # students' input side on the CPU preset ('cpu-small': 64 x 64)


@dataclass(frozen=True)
class StudentPlan:
    slice_axis: int  # array axis of (Z, Y, X) the students slice across
    slice_axis_name: str
    image_size: tuple[int, int]  # students' input (h, w) in pixels
    normalization: str  # 'zscore' (MR-like) | 'clip-zscore' (CT-like: clip to window, then z-score)
    window: Optional[tuple[float, float]]  # raw clip window for 'clip-zscore'


@dataclass(frozen=True)
class Plan:
    patients: tuple[str, ...]
    labeled: tuple[str, ...]
    rules: PlanRules
    fingerprint: Fingerprint
    reg: RegPlan
    student: StudentPlan
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        reg = asdict(self.reg)
        return to_dict({
            "version": self.version, "patients": list(self.patients), "labeled": list(self.labeled),
            "rules": asdict(self.rules),
            "fingerprint": self.fingerprint.to_dict(), "reg": reg, "student": asdict(self.student),
        })

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Plan":
        r = dict(d["reg"])
        grid = dict(r["grid"])
        reg = RegPlan(
            grid=CanonicalGrid(tuple(grid["shape"]), tuple(grid["spacing"]),
                               tuple(grid["window"]) if grid.get("window") is not None else None),
            prealign=PrealignConfig(**r["prealign"]),
            ncc_window=tuple(r["ncc_window"]),  # type: ignore[arg-type]
            smoothness_weight=float(r["smoothness_weight"]),
            thick_slices=bool(r["thick_slices"]),
            extent_mm=tuple(r["extent_mm"]),  # type: ignore[arg-type]
        )
        s = dict(d["student"])
        student = StudentPlan(int(s["slice_axis"]), str(s["slice_axis_name"]), tuple(s["image_size"]),  # type: ignore[arg-type]
                              str(s["normalization"]), tuple(s["window"]) if s.get("window") is not None else None)
        return Plan(tuple(d["patients"]), tuple(d["labeled"]), PlanRules(**d["rules"]),
                    Fingerprint.from_dict(d["fingerprint"]), reg, student, int(d["version"]))


def registration_window(fp: Fingerprint) -> Optional[tuple[float, float]]:
    """CT-like data: the labelled foreground's 0.5-99.5th percentile range widened by its own
    width on either side, so the tissue around the organs (fat, body outline) keeps contrast
    on the grid while air and bone saturate; never wider than the 0.5-99.5th percentiles of
    all voxels (organs holding gas, like a stomach, already span nearly all of it).
    MR-like or unlabelled: None (per-volume percentiles)."""
    if fp.modality != "ct-like" or fp.foreground_intensity is None:
        return None
    lo, hi = fp.foreground_intensity.percentiles["0.5"], fp.foreground_intensity.percentiles["99.5"]
    width = max(hi - lo, 1.0)
    floor, ceiling = fp.intensity.percentiles["0.5"], fp.intensity.percentiles["99.5"]
    low, high = max(lo - width, floor), min(hi + width, ceiling)
    return (round(low, 1), round(high, 1)) if high > low else None


def geometry_of(fp: Fingerprint) -> DatasetGeometry:
    return DatasetGeometry(fp.spacing_median, fp.fov_median_mm, fp.roi_mm, registration_window(fp))


def plan_students(fp: Fingerprint, rules: PlanRules = PlanRules(), max_size: int = STUDENT_MAX_SIZE) -> StudentPlan:
    """Slice across the lowest-resolution axis (Z for near-isotropic data); a square input
    whose side is the larger in-plane extent in voxels rounded up to a multiple of 32 (the
    Swin student halves it five times), between 64 and ``max_size`` (the students resize each
    slice to it); clip + z-score for CT-like data, z-score for MR-like."""
    thick = fp.anisotropy >= rules.thick_ratio
    axis = fp.low_res_axis if thick else 0
    extent = max(fp.shape_median[a] for a in range(3) if a != axis)
    side = max(STUDENT_MIN_SIZE, min(max_size, 32 * -(-int(extent) // 32)))
    size = (side, side)
    if fp.modality == "ct-like" and fp.foreground_intensity is not None:
        window = (fp.foreground_intensity.percentiles["0.5"], fp.foreground_intensity.percentiles["99.5"])
        return StudentPlan(axis, AXIS_NAMES[axis], size, "clip-zscore", window)  # type: ignore[arg-type]
    return StudentPlan(axis, AXIS_NAMES[axis], size, "zscore", None)  # type: ignore[arg-type]


def make_plan(dataset: Dataset, patients: Optional[Iterable[str]], labeled: Iterable[str] = (),
              rules: PlanRules = PlanRules()) -> Plan:
    """Measure the cases of ``patients`` (None: every case), the labels of ``labeled`` only, and
    derive the plan."""
    chosen = tuple(sorted(patients)) if patients is not None else tuple(sorted(dataset.patient_ids))
    known = tuple(sorted(set(labeled) & set(chosen)))
    fp = fingerprint(dataset, chosen, known)
    return Plan(chosen, known, rules, fp, plan_registration(geometry_of(fp), rules), plan_students(fp, rules))


def plan_path(dataset: Dataset) -> Path:
    return Path(dataset.root) / PLAN_FILENAME


def save_plan(plan: Plan, path: Path) -> Path:
    return write_json(Path(path), plan.to_dict())


def load_plan(path: Path) -> Plan:
    path = Path(path)
    try:
        return Plan.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable cctr plan ({exc})") from exc


def plan_for(dataset: Dataset, split: Optional[Split], labeled: Optional[str], rules: PlanRules = PlanRules(),
             force: bool = False) -> Plan:
    """The plan of ``dataset`` measured on the split's training patients (no split: every
    patient) and the labels of its labeled set ``labeled`` (None: no label), read from
    ``DATA/cctr_plan.json`` when it matches, otherwise computed and saved."""
    patients = tuple(sorted(split.train)) if split is not None else tuple(sorted(dataset.patient_ids))
    known = tuple(sorted(split.labeled(labeled))) if split is not None and labeled is not None else ()
    path = plan_path(dataset)
    if not force and path.is_file():
        try:
            stored = load_plan(path)
            if (stored.version, stored.patients, stored.labeled, stored.rules) == (PLAN_VERSION, patients, known, rules):
                return stored
        except (ValueError, KeyError):
            pass  # unreadable or from another version: measured again below
    plan = make_plan(dataset, patients, known, rules)
    try:
        save_plan(plan, path)
    except OSError as exc:
        print(f"cctr: note: could not save the plan to {path} ({exc}); it is recomputed next time", file=sys.stderr)
    return plan


def labeled_or_default(split: Optional[Split], name: Optional[str]) -> Optional[str]:
    """The labeled set a command that names none plans with: ``name``, else the split's set
    ``'1'`` when it has one (the labels a user of this tool has at least), else none."""
    if name is not None or split is None:
        return name
    return "1" if "1" in split.labeled_sets else None


def reg_config(plan: Plan, base: RegConfig = RegConfig()) -> RegConfig:
    """The registration config a run uses without ``--config``: ``base`` (network, schedule)
    with the planned grid, pre-alignment, NCC window and smoothness."""
    return apply_plan(plan.reg, base)


def seg_overrides(plan: Plan) -> dict[str, Any]:
    """Student settings for ``dataclasses.replace(TrainConfig, **...)``: ``image_size``,
    ``normalization`` and, for ``clip-zscore``, its ``intensity_window``."""
    out: dict[str, Any] = {"image_size": tuple(plan.student.image_size), "normalization": plan.student.normalization}
    if plan.student.normalization == "clip-zscore":
        out["intensity_window"] = tuple(float(v) for v in plan.student.window)
    return out


def frontend(plan: Plan) -> FrontEnd:
    """The canonical grid and pre-alignment the classical registration backends run on (the
    learned one keeps its checkpoint's)."""
    return FrontEnd(plan.reg.grid, plan.reg.prealign)


def format_plan(plan: Plan) -> str:
    """Human-readable lines: fingerprint, then the registration and student plan."""
    fp, reg, st = plan.fingerprint, plan.reg, plan.student

    def t(v: Iterable[float], fmt: str = ".1f") -> str:
        return " x ".join(format(float(x), fmt) for x in v)

    fg = fp.foreground_intensity
    lines = [
        f"plan ({len(plan.patients)} training patients, labels of {len(plan.labeled)}; {fp.cases} cases measured in "
        f"{fp.seconds:.1f} s):",
        f"  spacing median (z, y, x) mm:  {t(fp.spacing_median, '.2f')}  (anisotropy {fp.anisotropy:.1f}, "
        f"low-resolution axis {AXIS_NAMES[fp.low_res_axis]})",
        f"  shape median (Z, Y, X):       {t(fp.shape_median, '.0f')}",
        f"  field of view median mm:      {t(fp.fov_median_mm)}",
        "  labelled anatomy box mm:      " + (t(fp.roi_mm) if fp.roi_mm else "unknown (no labels)"),
        f"  intensities:                  {fp.modality} ({fp.modality_reason}); 0.5-99.5th pct "
        f"{fp.intensity.percentiles['0.5']:.4g}..{fp.intensity.percentiles['99.5']:.4g}"
        + (f", foreground {fg.percentiles['0.5']:.4g}..{fg.percentiles['99.5']:.4g}" if fg else ""),
        "  class voxel fractions:        " + ", ".join(f"{n} {100 * f:.2f}%" for n, f in zip(fp.class_names, fp.class_fractions)),
        f"  registration grid:            {' x '.join(str(n) for n in reg.grid.shape)} voxels of {t(reg.grid.spacing, '.2f')} mm "
        f"= {t([n * s for n, s in zip(reg.grid.shape, reg.grid.spacing)])} mm (to cover {t(reg.extent_mm)} mm)",
        "  registration intensities:     " + (f"window {reg.grid.window[0]:.4g}..{reg.grid.window[1]:.4g} -> [0, 1]"
                                              if reg.grid.window else "per-volume 1-99th percentiles -> [0, 1]"),
        f"  pre-alignment:                {reg.prealign.method} "
        + ("(in-plane rotation + shift search: thick-slice stacks)" if reg.prealign.method == "search"
           else "(3D centre-of-mass shift: isotropic volumes)" if reg.prealign.method == "moments" else ""),
        f"  NCC window (canonical voxels): {' x '.join(str(n) for n in reg.ncc_window)}; smoothness weight {reg.smoothness_weight:g}",
        f"  students:                     slice across {st.slice_axis_name}, input {st.image_size[0]} x {st.image_size[1]}, "
        f"{st.normalization}" + (f" (clip {st.window[0]:.4g}..{st.window[1]:.4g})" if st.window else ""),
    ]
    return "\n".join(lines)
