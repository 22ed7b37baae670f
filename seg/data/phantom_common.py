"""What the procedural phantoms share (the cardiac one, :mod:`seg.data.phantom`, the
abdominal one, :mod:`seg.data.phantom_abdomen`, and the isotropic one,
:mod:`seg.data.phantom_isotropic`): uniform draws, 2D ellipse signed distances, fractal noise
texture, the axis-aligned affine, the nnU-Net ``dataset.json`` a phantom writes, and building
a phantom folder in parallel so it appears complete or not at all.

Nothing here knows any anatomy; changing a function here changes every phantom that uses it.
"""
from __future__ import annotations

import cmath
import json
import os
import shutil
import sys
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from cctr.seg.data.case import CaseError
from cctr.seg.overwrite import refuse_foreign

Range = tuple[float, float]

PHANTOM_KEY = "cctr_phantom"  # dataset.json key marking a folder a phantom wrote
# Layouts without a dataset.json (TransUNet's Synapse) carry their provenance in this file;
# hidden, so that layout detection does not see it.
MARKER_FILE = ".cctr_phantom.json"
# Every file a phantom wrote, relative to its folder: what a new phantom may delete there.
MANIFEST_FILE = ".cctr_phantom_files.json"
# Files cctr derives from a dataset folder (``cctr plan``'s cctr_plan.json) and stale
# temporaries of killed writers: replacing the data makes them stale, so they go with it.
DERIVED_FILES = ("cctr_plan.json",)
TEMP_PREFIX = ".tmp-cctr-"


def uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def axis_affine(spacing_zyx: Sequence[float], origin_xyz: Sequence[float]) -> np.ndarray:
    """NIfTI affine: axis-aligned, ``diag(sx, sy, sz)``, with ``origin_xyz`` in mm."""
    sz, sy, sx = spacing_zyx
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = origin_xyz
    return aff


def ellipse_sd(a: np.ndarray, b: np.ndarray, ra, rb, lumps=()) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an ellipse with semi-axes ``ra``
    along ``a`` and ``rb`` along ``b``, its radius modulated by harmonics ``lumps``
    (amplitude, phase) of orders 2, 3, ..."""
    ra = np.maximum(ra, np.float32(1e-3))
    rb = np.maximum(rb, np.float32(1e-3))
    ua, ub = a / ra, b / rb
    rho = np.sqrt(ua * ua + ub * ub)
    if lumps:
        # cos(k theta + phase) as the real part of exp(i phase) * exp(i theta)^k, no trig per voxel.
        unit = (ua + 1j * ub) / np.maximum(rho, 1e-6)
        power = unit * unit
        modulation = np.ones_like(rho)
        for amp, phase in lumps:
            modulation += amp * (cmath.rect(1.0, phase) * power).real
            power = power * unit
        rho = rho / modulation
    return (rho - 1.0) * np.sqrt(ra * rb)


def _upsample_axis(coarse: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation of ``coarse`` along ``axis`` to ``n_out`` samples, end points
    aligned. Gathers and blends, no BLAS: the result is the same on any machine load."""
    n_in = coarse.shape[axis]
    t = np.linspace(0.0, n_in - 1, n_out)
    lo = np.minimum(np.floor(t).astype(np.intp), n_in - 2)
    shape = [1] * coarse.ndim
    shape[axis] = n_out
    frac = (t - lo).astype(np.float32).reshape(shape)
    return np.take(coarse, lo, axis=axis) * (1.0 - frac) + np.take(coarse, lo + 1, axis=axis) * frac


def upsampled_noise(
    rng: np.random.Generator, shape_zyx: tuple[int, int, int], scales_zyx: Sequence[tuple[float, float, float]]
) -> np.ndarray:
    """Fractal noise ``(Z, Y, X)`` float32, zero mean, unit std: a weighted sum of coarse
    Gaussian noise grids, one per octave, with knots ``scale`` voxels apart per axis (1: every
    voxel independent), upsampled linearly; octave ``i`` has weight ``i + 1``."""
    total = np.zeros(shape_zyx, dtype=np.float32)
    for weight, scales in enumerate(scales_zyx, start=1):
        knots = [max(2, int(np.ceil((n - 1) / max(sc, 1.0))) + 1) for n, sc in zip(shape_zyx, scales)]
        octave = rng.standard_normal(knots, dtype=np.float32)
        for axis, (n, k) in enumerate(zip(shape_zyx, knots)):
            if n != k:
                octave = _upsample_axis(octave, axis, n)
        total += weight * octave
    total -= total.mean()
    return total / max(float(total.std()), 1e-6)


def phantom_dataset_json(
    name: str,
    description: str,
    channel: str,
    class_names: Sequence[str],
    case_ids: Sequence[str],
    patient_of: dict[str, str],
    provenance: dict[str, Any],
) -> str:
    """The nnU-Net ``dataset.json`` text of a phantom folder (key order is part of the output)."""
    meta = {
        "name": name,
        "description": description,
        "channel_names": {"0": channel},
        "labels": {cls: i for i, cls in enumerate(class_names)},
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
        "patient_of": patient_of,
        PHANTOM_KEY: provenance,
    }
    return json.dumps(meta, indent=2)


def is_phantom_folder(path: Path) -> bool:
    """Whether ``path`` holds a folder some phantom wrote (so it may be replaced)."""
    if (path / MARKER_FILE).is_file():
        return True
    try:
        return PHANTOM_KEY in json.loads((path / "dataset.json").read_text())
    except (OSError, ValueError):
        return False


def _phantom_files(path: Path) -> Optional[set[str]]:
    """The files the phantom in ``path`` wrote (its manifest); ``None`` when it has none (a
    phantom of an older cctr, or the manifest was removed)."""
    try:
        listed = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return set(listed) if isinstance(listed, list) and all(isinstance(f, str) for f in listed) else None


def foreign_entries(path: Path) -> list[str]:
    """What is in the phantom folder ``path`` that no phantom wrote: files outside its manifest
    (every file, without one) and folders holding none of its files, relative to ``path``."""
    own = _phantom_files(path) or set()
    own_dirs = {str(parent) for f in own for parent in Path(f).parents if str(parent) != "."}
    foreign = []
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path)
        name = str(rel)
        if name in own or name == MANIFEST_FILE or name in DERIVED_FILES or rel.name.startswith(TEMP_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if name not in own_dirs and not any(str(p) in foreign for p in rel.parents):
                foreign.append(f"{name}/")
        elif not any(f"{p}/" in foreign for p in rel.parents):
            foreign.append(name)
    return foreign


def write_manifest(folder: Path) -> None:
    """List every file of the finished phantom ``folder`` in its manifest."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    (folder / MANIFEST_FILE).write_text(json.dumps(files, indent=1) + "\n")


LEVELS = (1, 2, 3)


def check_level(level: int) -> None:
    """ValueError unless ``level`` is a phantom difficulty level (:data:`LEVELS`)."""
    if level not in LEVELS:
        raise ValueError(f"phantom difficulty must be one of {LEVELS} (1: the default), got {level!r}")


def check_phantom_target(out: Path, patients: int, seed: int, overwrite: bool = False) -> None:
    """:class:`CaseError` unless ``out`` may receive a phantom of ``patients`` from ``seed``: it
    is new, empty, or a phantom folder holding nothing but what a phantom wrote (anything else
    is deleted only with ``overwrite``; a folder no phantom wrote is never replaced)."""
    if seed < 0:
        raise CaseError(f"{out}: the seed must be a non-negative integer, got {seed}")
    if patients < 3:
        raise CaseError(f"{out}: need at least 3 patients (train/val/test split), got {patients}")
    if out.exists() and not out.is_dir():
        raise CaseError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_phantom_folder(out):
        raise CaseError(f"{out}: folder is not empty and is not a phantom folder; refusing to overwrite it")
    if out.is_dir() and not overwrite:
        refuse_foreign(out, foreign_entries(out), action="delete")


class _Inline:
    """The executor interface, run in this process (no start-up cost for small jobs)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, jobs):
        return map(fn, jobs)


def build_phantom_folder(
    out: Path,
    write_one: Callable[[Path, Any], Any],
    jobs: Sequence[Any],
    finish: Callable[[Path, list], None],
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
) -> Path:
    """Run ``write_one(folder, job)`` for every job (in ``workers`` processes, default one per
    CPU; a top-level function, so it pickles), then ``finish(folder, results in job order)``,
    in a fresh folder next to ``out`` that then replaces ``out`` by renames: the folder
    appears complete or not at all. ``progress`` shows a bar (default: stderr is a terminal)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    show = sys.stderr.isatty() if progress is None else progress
    # mkdir (not mkdtemp) so the finished folder gets the user's usual permissions.
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        bar = tqdm(total=len(jobs), desc="phantom", unit="patient", disable=not show)
        done: list = []
        with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
            for result in pool.map(partial(write_one, tmp), jobs):
                done.append(result)
                bar.update(1)
        bar.close()
        finish(tmp, done)
        write_manifest(tmp)
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` by the finished folder ``new`` with renames only."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-", dir=str(out.parent)))
    os.replace(out, old / out.name)
    os.replace(new, out)
    shutil.rmtree(old)
