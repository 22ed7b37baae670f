"""The registration plan: canonical grid, pre-alignment and loss settings derived from a
dataset's geometry, so a new anatomy registers without hand-tuning.

This module owns the rules only. It takes plain numbers (:class:`DatasetGeometry`: spacings
and extents in mm, an optional raw intensity window), never cases, so ``reg`` keeps out of
``seg``; :mod:`joint.plan` measures the numbers on a dataset and feeds them here.

The rules, each a field of :class:`PlanRules`:

- **Extent to cover** (mm, per axis (z, y, x)): the median field of view of the training
  volumes, or, when labels are known, the centred box that holds the labelled anatomy of
  nearly every training case (the smaller of the two: a cardiac cine's field of view is a
  whole chest, of which the heart is the middle 140 mm), times ``margin``.
- **Spacing** (mm): as fine as the voxel budget allows, never finer than the data's own
  median spacing along an axis (a thick-slice stack keeps its slice spacing). y and x share
  one spacing so the in-plane rotation search stays valid.
- **Shape**: each axis a multiple of 16 (a 4-level U-Net halves it cleanly) covering the
  extent; the product is at most ``voxel_budget`` (memory and time of one training step grow
  with it; the default, 2^16 = 16 x 64 x 64, is the cost the CPU defaults were sized for:
  600 pretraining steps in about 7 minutes on one core. Raise it on a GPU).
- **Pre-alignment**: thick-slice stacks (slice spacing >= ``thick_ratio`` x in-plane) keep
  the in-plane rotation + shift search that short-axis cine needs; isotropic-like volumes
  get the 3D centre-of-mass shift (``'moments'``).
- **NCC window**: ``ncc_window_mm`` converted to the nearest odd number of canonical voxels
  per axis (at least 3, and at least 125 voxels in all); the smoothness weight is kept (the displacement gradient it
  penalises is dimensionless on a near-isotropic grid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from cctr.reg.config import RegConfig
from cctr.reg.losses import LossConfig
from cctr.reg.grid import CanonicalGrid
from cctr.reg.prealign import PrealignConfig

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class DatasetGeometry:
    """What the registration plan needs to know about a dataset, as plain numbers."""

    spacing_mm: Triple  # median native voxel spacing (z, y, x)
    fov_mm: Triple  # median native field of view, shape x spacing (z, y, x)
    roi_mm: Optional[Triple] = None  # centred box holding the labelled anatomy (z, y, x); None: no labels
    window: Optional[tuple[float, float]] = None  # raw intensity window for the grid (CT-like data)

    def __post_init__(self) -> None:
        for name in ("spacing_mm", "fov_mm") + (("roi_mm",) if self.roi_mm is not None else ()):
            value = getattr(self, name)
            if len(value) != 3 or any(not float(v) > 0 for v in value):
                raise ValueError(f"dataset geometry: {name} must be three positive mm values, got {value}")


@dataclass(frozen=True)
class PlanRules:
    voxel_budget: int = 2**16  # canonical voxels at most: 16 x 64 x 64, the cost the CPU defaults are sized for
    margin: float = 1.1  # extent to cover / extent measured
    thick_ratio: float = 2.5  # slice spacing / in-plane spacing from which a volume is a stack of slices
    ncc_window_mm: float = 15.0  # local NCC window, mm per axis
    smoothness_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.voxel_budget < 16**3:
            raise ValueError(f"plan: voxel_budget must be at least 16^3, got {self.voxel_budget}")
        if self.margin < 1.0 or self.thick_ratio <= 1.0 or self.ncc_window_mm <= 0 or self.smoothness_weight < 0:
            raise ValueError("plan: margin >= 1, thick_ratio > 1, ncc_window_mm > 0 and smoothness_weight >= 0 are required")


@dataclass(frozen=True)
class RegPlan:
    grid: CanonicalGrid
    prealign: PrealignConfig
    ncc_window: tuple[int, int, int]  # canonical voxels (z, y, x)
    smoothness_weight: float
    thick_slices: bool
    extent_mm: Triple  # what the grid had to cover (z, y, x)


def is_thick_slice(spacing_mm: Sequence[float], rules: PlanRules = PlanRules()) -> bool:
    """A stack of thick slices: z spacing at least ``thick_ratio`` times the finer in-plane one."""
    return float(spacing_mm[0]) >= rules.thick_ratio * min(float(spacing_mm[1]), float(spacing_mm[2]))


def extent_to_cover(geometry: DatasetGeometry, margin: float) -> Triple:
    """mm per axis: the field of view, or the labelled region when smaller, times ``margin``."""
    roi = geometry.roi_mm or geometry.fov_mm
    return tuple(margin * min(float(f), float(r)) for f, r in zip(geometry.fov_mm, roi))  # type: ignore[return-value]


def _ceil16(n: float) -> int:
    return max(16, 16 * math.ceil(n / 16.0 - 1e-9))


def plan_grid(geometry: DatasetGeometry, rules: PlanRules = PlanRules(), window: Optional[tuple[float, float]] = None) -> CanonicalGrid:
    """The finest grid (shape multiple of 16 per axis, product <= budget) covering the extent.

    One target spacing ``s`` is searched from fine to coarse in 1% steps; axis spacing is
    ``max(s, the data's spacing along it)`` (y and x share the coarser of theirs), shape is
    the extent over that spacing rounded up to 16. The first ``s`` within budget wins."""
    extent = extent_to_cover(geometry, rules.margin)
    floor_z = float(geometry.spacing_mm[0])
    floor_yx = max(float(geometry.spacing_mm[1]), float(geometry.spacing_mm[2]))
    s = min(floor_z, floor_yx)
    for _ in range(2000):  # 1% steps: x 4e8 in spacing, far past any budget
        spacing = (max(s, floor_z), max(s, floor_yx), max(s, floor_yx))
        shape = tuple(_ceil16(e / sp) for e, sp in zip(extent, spacing))
        if math.prod(shape) <= rules.voxel_budget:
            return CanonicalGrid(shape, tuple(round(v, 4) for v in spacing), window)  # type: ignore[arg-type]
        s *= 1.01
    raise ValueError(f"plan: no grid of at most {rules.voxel_budget} voxels covers {extent} mm")


MIN_NCC_VOXELS = 125  # local NCC over fewer voxels is mostly noise (a 3^3 window on a coarse CT grid: loss ~0.8)


def ncc_window_voxels(spacing_mm: Sequence[float], window_mm: float) -> tuple[int, int, int]:
    """The nearest odd number of voxels to ``window_mm`` along each axis, at least 3; on a
    coarse grid the finest axes grow by 2 until the window holds ``MIN_NCC_VOXELS``."""
    window = [max(3, 2 * int(math.floor(window_mm / float(s) / 2.0)) + 1) for s in spacing_mm]
    while math.prod(window) < MIN_NCC_VOXELS:
        finest = min(range(3), key=lambda a: (window[a] * float(spacing_mm[a]), a))
        window[finest] += 2
    return tuple(window)  # type: ignore[return-value]


def plan_registration(geometry: DatasetGeometry, rules: PlanRules = PlanRules()) -> RegPlan:
    thick = is_thick_slice(geometry.spacing_mm, rules)
    grid = plan_grid(geometry, rules, geometry.window)
    # thick slices: the short-axis search (cardiac behaviour); otherwise a 3D centre-of-mass shift
    prealign = PrealignConfig(method="search") if thick else PrealignConfig(method="moments")
    return RegPlan(
        grid=grid,
        prealign=prealign,
        ncc_window=ncc_window_voxels(grid.spacing, rules.ncc_window_mm),
        smoothness_weight=rules.smoothness_weight,
        thick_slices=thick,
        extent_mm=extent_to_cover(geometry, rules.margin),
    )


def apply_plan(plan: RegPlan, base: RegConfig = RegConfig()) -> RegConfig:
    """``base`` with the planned grid, pre-alignment, NCC window and smoothness; everything
    else (network, schedule, similarity kind) kept."""
    loss: LossConfig = replace(base.loss, ncc_window=plan.ncc_window, smoothness_weight=plan.smoothness_weight)
    return replace(base, grid=plan.grid, prealign=plan.prealign, loss=loss)
