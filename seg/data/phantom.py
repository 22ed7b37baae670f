"""The embedded default dataset: a procedural cardiac cine-MRI phantom, ACDC-like.

Each patient is a short-axis stack (``(Z, Y, X)``, slice 0 at the base, 8-16 slices 5-10 mm
apart, 1.2-1.8 mm in plane) with an end-diastolic (ED) and an end-systolic (ES) frame that
share the patient's geometry, body and texture; labels are background / RV / MYO / LV.

Anatomy, in mm, in a heart frame centred on the LV axis: ``a`` points from the LV towards the
RV, ``b`` is ``a`` turned a quarter turn (posterior when the heart is not rotated). The long
axis position ``s`` runs from 0 at the base to 1 at the epicardial apex. The LV is an
eccentric, slightly lumpy ellipse that tapers to the apex; the RV is an ellipse minus the LV
epicardium (a crescent on the septum) that ends before the apex. At ES the apex stays put,
the base descends, the cavities shrink and the myocardium keeps its volume (thicker wall).

Everything is a pure function of ``(seed, patient number, PhantomConfig)``: patient ``k``
draws from its own ``SeedSequence(seed, spawn_key=(k,))``, so it does not depend on how many
patients are made. Texture noise is upsampled coarse Gaussian noise (the ``upsample`` method
of neurite's fractal noise) drawn from numpy, so one numpy stream drives everything and the
worker processes need no torch.

:func:`write_phantom` writes the nnU-Net raw layout plus the cctr extensions (see
:mod:`seg.data.dataset` and the readers): ``imagesTr/<case>_0000.nii.gz``,
``labelsTr/<case>.nii.gz``, ``dataset.json`` (with ``patient_of``) and ``split.json``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from cctr.seg.data.case import Case
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.phantom_common import (PHANTOM_KEY, Range, axis_affine, build_phantom_folder, check_level,
                                          check_phantom_target)
from cctr.seg.data.phantom_common import ellipse_sd as _ellipse_sd
from cctr.seg.data.phantom_common import phantom_dataset_json, upsampled_noise
from cctr.seg.data.phantom_common import uniform as _u
from cctr.seg.data.split import SPLIT_FILENAME, draw_split, save_split

__all__ = ["PHANTOM_KEY", "PhantomConfig", "make_patient", "upsampled_noise", "write_phantom"]

FRAMES = ("ED", "ES")
RV_WALL_MM = 3.0  # the RV free wall: drawn dark, labeled background as in ACDC


@dataclass(frozen=True)
class PhantomConfig:
    """Ranges (low, high) that per-patient parameters are drawn from, uniformly."""

    class_names: tuple[str, ...] = ("background", "RV", "MYO", "LV")
    slices: tuple[int, int] = (8, 16)
    slice_spacing_mm: Range = (5.0, 10.0)
    inplane_spacing_mm: Range = (1.2, 1.8)
    matrix: tuple[int, int] = (128, 192)  # in-plane size in voxels, each axis
    fov_mm: Range = (180.0, 250.0)
    lv_length_mm: Range = (75.0, 105.0)  # base to epicardial apex, ED
    coverage: Range = (0.85, 1.1)  # stack length / LV length
    base_offset: Range = (0.0, 0.08)  # s of slice 0
    lv_radius_mm: Range = (19.0, 30.0)  # ED cavity radius at the base
    lv_eccentricity: Range = (0.0, 0.15)
    wall_mm: Range = (6.0, 12.0)  # ED wall thickness at the base
    taper_power: Range = (1.6, 2.6)
    rv_thickness_mm: Range = (14.0, 28.0)  # ED cavity depth along a at the base
    rv_wrap: Range = (1.1, 1.6)  # RV half-width / LV epicardial radius
    rv_inset: Range = (0.3, 0.7)  # how far the RV ellipse reaches into the LV, / radius
    rv_shift: Range = (-0.35, 0.1)  # RV centre along b, / radius (negative: anterior)
    rv_end: Range = (0.6, 0.9)  # s where the RV ends
    rotation_deg: float = 30.0  # in-plane heart rotation within +-this
    heart_offset_mm: float = 15.0  # heart centre within +-this of the image centre
    axis_tilt_mm: float = 8.0  # in-plane drift of the LV centre from base to apex
    es_lv_scale: Range = (0.55, 0.82)  # ES / ED cavity radius
    es_rv_scale: Range = (0.6, 0.85)
    es_shortening: Range = (0.06, 0.15)  # base descent at ES / LV length
    noise_fraction: Range = (0.02, 0.05)  # Rician sigma / blood intensity
    bias_strength: Range = (0.1, 0.3)  # std of the log bias field
    gamma: Range = (0.75, 1.3)  # per-patient contrast
    intensity_scale: Range = (150.0, 900.0)

    @classmethod
    def at_level(cls, level: int) -> "PhantomConfig":
        """The phantom at difficulty ``level``: 1 is the default; 2 and 3 widen how subjects
        differ, in anatomy (heart size, wall, RV, length, pose: rotation, position, axis tilt),
        field of view and appearance (contrast curve, bias field, noise), towards the spread
        of real scanners and patients, where one labeled subject teaches a network far less."""
        check_level(level)
        if level == 1:
            return cls()
        wide = level == 3
        return cls(
            fov_mm=(160.0, 300.0) if wide else (170.0, 280.0),
            lv_length_mm=(60.0, 120.0) if wide else (68.0, 112.0),
            lv_radius_mm=(14.0, 35.0) if wide else (16.0, 33.0),
            lv_eccentricity=(0.0, 0.3) if wide else (0.0, 0.22),
            wall_mm=(4.5, 14.0) if wide else (5.0, 13.0),
            rv_thickness_mm=(9.0, 33.0) if wide else (11.0, 31.0),
            rv_wrap=(1.0, 1.8) if wide else (1.05, 1.7),
            rotation_deg=90.0 if wide else 60.0,
            heart_offset_mm=30.0 if wide else 24.0,
            axis_tilt_mm=18.0 if wide else 13.0,
            noise_fraction=(0.03, 0.12) if wide else (0.025, 0.08),
            bias_strength=(0.2, 0.6) if wide else (0.15, 0.45),
            gamma=(0.45, 2.1) if wide else (0.6, 1.7),
        )

    def __post_init__(self) -> None:
        if len(self.class_names) != 4:
            raise ValueError(f"PhantomConfig: the phantom draws 4 classes (background, RV, MYO, LV), got {self.class_names}")
        for name, value in asdict(self).items():
            if isinstance(value, tuple) and name != "class_names" and value[0] > value[1]:
                raise ValueError(f"PhantomConfig.{name}: low {value[0]} > high {value[1]}")


@dataclass(frozen=True)
class Anatomy:
    """One patient's drawn geometry and appearance (mm, radians, relative intensities)."""

    shape: tuple[int, int, int]  # (Z, Y, X)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # world mm of voxel (x, y, z) = 0, NIfTI order
    centre: tuple[float, float]  # LV centre at s = 0.5, (y, x) mm from the image centre
    tilt: tuple[float, float]  # LV centre drift base -> apex, (y, x) mm
    rv_angle: float  # direction of a, angle from +x towards +y
    lv_length: float
    base_offset: float
    lv_radius: float
    eccentricity: float
    ecc_angle: float
    wall: float
    taper: float
    lv_lumps: tuple[tuple[float, float], ...]  # (amplitude, phase) of harmonics 2, 3, 4
    rv_thickness: float
    rv_wrap: float
    rv_inset: float
    rv_shift: float
    rv_end: float
    rv_lumps: tuple[tuple[float, float], ...]
    papillary_mm: float
    es_lv_scale: float
    es_rv_scale: float
    es_shortening: float
    body_centre: tuple[float, float]  # (y, x) mm from the image centre
    body_axes: tuple[float, float]  # (y, x) semi-axes mm
    body_angle: float
    fat_mm: float
    muscle_mm: float
    lung_axes: tuple[float, float]  # (along a, along b) semi-axes mm
    lung_lumps: tuple[tuple[float, float], ...]
    intensities: dict  # tissue name -> relative intensity, blood = 1
    noise_fraction: float
    bias_strength: float
    bias_gradient: tuple[float, float]  # log-intensity slope across the image, (y, x)
    gamma: float
    intensity_scale: float


def patient_id(number: int, patients: int = 1) -> str:
    return f"patient{number:0{max(3, len(str(patients)))}d}"


def case_id(pid: str, frame: str) -> str:
    return f"{pid}_{frame}"


def _round_to(n: float, step: int, lo: int, hi: int) -> int:
    return int(np.clip(step * round(n / step), lo, hi))


def _lumps(rng: np.random.Generator, amplitude: float) -> tuple[tuple[float, float], ...]:
    return tuple((float(rng.uniform(0, amplitude)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))


def draw_anatomy(rng: np.random.Generator, cfg: PhantomConfig) -> Anatomy:
    """Draw one patient's parameters; the order of draws is part of the phantom's definition."""
    sy = _u(rng, cfg.inplane_spacing_mm)
    sx = float(np.clip(sy * rng.uniform(0.97, 1.03), *cfg.inplane_spacing_mm))
    fov = _u(rng, cfg.fov_mm)
    ny = _round_to(fov / sy, 8, cfg.matrix[0], cfg.matrix[1])
    nx = _round_to(fov * rng.uniform(1.0, 1.2) / sx, 8, cfg.matrix[0], cfg.matrix[1])
    sz = _u(rng, cfg.slice_spacing_mm)
    length = _u(rng, cfg.lv_length_mm)
    nz = int(np.clip(round(length * _u(rng, cfg.coverage) / sz) + 1, cfg.slices[0], cfg.slices[1]))
    rot = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    off = cfg.heart_offset_mm
    tilt_dir = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0, cfg.axis_tilt_mm)
    myo = rng.uniform(0.18, 0.3)
    return Anatomy(
        shape=(nz, ny, nx),
        spacing=(sz, sy, sx),
        origin=(
            float(-(nx - 1) / 2 * sx + rng.uniform(-20, 20)),
            float(-(ny - 1) / 2 * sy + rng.uniform(-20, 20)),
            float(rng.uniform(-60, 0)),
        ),
        centre=(float(rng.uniform(-off, off)), float(rng.uniform(-off, off))),
        tilt=(float(tilt * np.sin(tilt_dir)), float(tilt * np.cos(tilt_dir))),
        rv_angle=float(np.pi + rot),
        lv_length=length,
        base_offset=_u(rng, cfg.base_offset),
        lv_radius=_u(rng, cfg.lv_radius_mm),
        eccentricity=_u(rng, cfg.lv_eccentricity),
        ecc_angle=float(rng.uniform(0, np.pi)),
        wall=_u(rng, cfg.wall_mm),
        taper=_u(rng, cfg.taper_power),
        lv_lumps=_lumps(rng, 0.04),
        rv_thickness=_u(rng, cfg.rv_thickness_mm),
        rv_wrap=_u(rng, cfg.rv_wrap),
        rv_inset=_u(rng, cfg.rv_inset),
        rv_shift=_u(rng, cfg.rv_shift),
        rv_end=_u(rng, cfg.rv_end),
        rv_lumps=_lumps(rng, 0.08),
        papillary_mm=float(rng.uniform(2.5, 4.0)),
        es_lv_scale=_u(rng, cfg.es_lv_scale),
        es_rv_scale=_u(rng, cfg.es_rv_scale),
        es_shortening=_u(rng, cfg.es_shortening),
        body_centre=(float(rng.uniform(-10, 25)), float(rng.uniform(-15, 15))),
        body_axes=(float(rng.uniform(100, 135)), float(rng.uniform(150, 200))),
        body_angle=float(np.deg2rad(rng.uniform(-15, 15))),
        fat_mm=float(rng.uniform(5, 14)),
        muscle_mm=float(rng.uniform(8, 14)),
        lung_axes=(float(rng.uniform(35, 55)), float(rng.uniform(55, 85))),
        lung_lumps=_lumps(rng, 0.12),
        intensities={
            "myocardium": float(myo),
            "tissue": float(rng.uniform(0.22, 0.38)),
            "muscle": float(myo * rng.uniform(0.9, 1.2)),
            "fat": float(rng.uniform(0.6, 0.85)),
            "lung": float(rng.uniform(0.02, 0.06)),
            "vessel": float(rng.uniform(0.75, 0.95)),
        },
        noise_fraction=_u(rng, cfg.noise_fraction),
        bias_strength=_u(rng, cfg.bias_strength),
        bias_gradient=(float(rng.uniform(-0.004, -0.001)), float(rng.uniform(-0.0015, 0.0015))),
        gamma=_u(rng, cfg.gamma),
        intensity_scale=_u(rng, cfg.intensity_scale),
    )


def _profile(s: np.ndarray, end: float, power: float) -> np.ndarray:
    """Radius factor along the long axis: 1 at the base, 0 at ``s = end`` and beyond."""
    x = np.clip(s / end, 0.0, 1.0)
    return np.sqrt(1.0 - x ** power)


@dataclass(frozen=True)
class _Geometry:
    """The patient's static in-plane geometry, shared by both frames."""

    a: np.ndarray  # (Z, Y, X) mm along the RV direction, from the LV centre of each slice
    b: np.ndarray  # (Z, Y, X) mm across it
    s_ed: np.ndarray  # (Z, 1, 1) long-axis position of each slice at ED
    body_sd: np.ndarray  # (1, Y, X) mm, negative inside the body


def _geometry(an: Anatomy) -> _Geometry:
    nz, ny, nx = an.shape
    sz, sy, sx = an.spacing
    # float32 throughout: these arrays are the bulk of the work.
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx)[None, None, :]
    s_ed = (an.base_offset + np.arange(nz, dtype=np.float32) * (sz / an.lv_length))[:, None, None]
    cy = an.centre[0] + an.tilt[0] * (s_ed - 0.5)
    cx = an.centre[1] + an.tilt[1] * (s_ed - 0.5)
    ca, sa = float(np.cos(an.rv_angle)), float(np.sin(an.rv_angle))
    a = (x - cx) * ca + (y - cy) * sa
    b = (x - cx) * sa - (y - cy) * ca
    by, bx = y - an.body_centre[0], x - an.body_centre[1]
    cb, sb = float(np.cos(an.body_angle)), float(np.sin(an.body_angle))
    body_sd = _ellipse_sd(by * cb - bx * sb, by * sb + bx * cb, an.body_axes[0], an.body_axes[1])
    return _Geometry(a=a, b=b, s_ed=s_ed, body_sd=body_sd)


@dataclass(frozen=True)
class _Heart:
    """Signed distances (mm, (Z, Y, X), negative inside) of one frame's heart structures."""

    lv_cavity: np.ndarray
    lv_epi: np.ndarray
    rv_outer: np.ndarray  # RV epicardial ellipse, before removing the LV
    papillary: np.ndarray
    atrium: np.ndarray  # blood above the base (unlabeled)


def _heart(an: Anatomy, g: _Geometry, frame: str) -> _Heart:
    if frame == "ED":
        s, length, lv_scale, rv_scale = g.s_ed, an.lv_length, 1.0, 1.0
    else:
        # The apex stays where it is and the base descends towards it.
        length = an.lv_length * (1.0 - an.es_shortening)
        s = 1.0 - (1.0 - g.s_ed) * an.lv_length / length
        lv_scale, rv_scale = an.es_lv_scale, an.es_rv_scale
    inside = s >= 0.0
    apex_wall = 0.8 * an.wall / an.lv_length
    r_ed = an.lv_radius * _profile(s, 1.0 - apex_wall, an.taper) * inside
    epi_ed = (an.lv_radius + an.wall) * _profile(s, 1.0, an.taper) * inside
    r = r_ed * lv_scale
    # Myocardial area per slice is conserved, stretched by the shorter ES long axis.
    epi = np.sqrt(r ** 2 + (epi_ed ** 2 - r_ed ** 2) * an.lv_length / length)
    ea, eb = float(np.cos(an.ecc_angle)), float(np.sin(an.ecc_angle))
    pa, pb = g.a * ea + g.b * eb, -g.a * eb + g.b * ea
    ra, rb = r * (1 + an.eccentricity), r * (1 - an.eccentricity)
    lv_cavity = np.where(r > 1.0, _ellipse_sd(pa, pb, ra, rb, an.lv_lumps), np.inf)
    lv_epi = np.where(epi > 1.0, _ellipse_sd(pa, pb, ra + epi - r, rb + epi - r, an.lv_lumps[:1]), np.inf)

    # The RV is placed on this frame's epicardium, so the septum stays its inner wall.
    rv_prof = _profile(s, an.rv_end, 2.0) * inside
    depth = an.rv_thickness * rv_prof * rv_scale
    far = epi + depth + 3.0
    near = -an.rv_inset * epi
    half_width = epi * an.rv_wrap * (0.6 + 0.4 * rv_prof) * math.sqrt(rv_scale)
    rv_outer = _ellipse_sd(
        g.a - (far + near) / 2, g.b - an.rv_shift * epi, (far - near) / 2, half_width, an.rv_lumps
    )
    rv_outer = np.where(depth > 2.0, rv_outer, np.inf)

    # Papillary muscles: two small dark disks inside the cavity, opposite the RV.
    pap = np.full(g.a.shape, np.inf, dtype=np.float32)
    mid = (s > 0.2) & (s < 0.75)
    radius = np.minimum(an.papillary_mm, 0.15 * r)
    for angle in (np.pi - 0.95, np.pi + 0.95):
        dist = np.maximum(r - radius - 1.0, 0.0)
        d = np.hypot(g.a - dist * math.cos(angle), g.b - dist * math.sin(angle)) - radius
        pap = np.minimum(pap, np.where(mid & (radius > 1.5), d, np.inf))

    above = (s < 0.0) & (s > -0.25)
    atrium = np.where(above, np.hypot(g.a + 4.0, g.b + 6.0) - 0.8 * an.lv_radius, np.inf)
    return _Heart(lv_cavity=lv_cavity, lv_epi=lv_epi, rv_outer=rv_outer, papillary=pap, atrium=atrium)


def _labels(h: _Heart) -> np.ndarray:
    """uint8 (Z, Y, X): 1 RV, 2 MYO, 3 LV (papillary muscles count as cavity, as in ACDC)."""
    lv = h.lv_cavity < 0
    myo = (h.lv_epi < 0) & ~lv
    rv = (h.rv_outer < -RV_WALL_MM) & (h.lv_epi >= 0)
    out = np.zeros(lv.shape, dtype=np.uint8)
    out[rv] = 1
    out[myo] = 2
    out[lv] = 3
    return out


@dataclass(frozen=True)
class _Textures:
    """Per-patient noise fields (Z, Y, X), zero mean unit std, shared by both frames."""

    tissue: np.ndarray
    fine: np.ndarray
    patches: np.ndarray
    bias: np.ndarray


def _textures(rng: np.random.Generator, shape: tuple[int, int, int]) -> _Textures:
    return _Textures(
        tissue=upsampled_noise(rng, shape, [(1, 3, 3), (1, 6, 6), (1, 12, 12), (1, 24, 24)]),
        fine=upsampled_noise(rng, shape, [(1, 1.5, 1.5), (1, 3, 3)]),
        patches=upsampled_noise(rng, shape, [(1, 4, 4), (1, 8, 8)]),
        bias=upsampled_noise(rng, shape, [(4, 48, 48), (8, 96, 96)]),
    )


def _surroundings(an: Anatomy, g: _Geometry, tex: _Textures, heart_ed: _Heart) -> np.ndarray:
    """Relative intensities (Z, Y, X) float32 of everything but the heart: body wall, lungs,
    aorta, spine, liver. Shared by both frames; the lungs keep clear of the ED heart."""
    it = an.intensities
    wall = an.fat_mm + an.muscle_mm
    img = np.zeros(an.shape, dtype=np.float32)
    img = np.where(g.body_sd < -wall, it["tissue"] * (1.0 + 0.3 * tex.tissue), img)
    img = np.where((g.body_sd >= -wall) & (g.body_sd < -an.fat_mm), it["muscle"] * (1.0 + 0.15 * tex.fine), img)
    img = np.where((g.body_sd >= -an.fat_mm) & (g.body_sd < 0), it["fat"] * (1.0 + 0.08 * tex.tissue), img)

    epi0 = an.lv_radius + an.wall
    aorta = np.hypot(g.a + 0.5 * an.lv_radius, g.b - (epi0 + 22.0)) - 11.0
    spine_a, spine_b = g.a + 0.2 * an.lv_radius, g.b - (epi0 + 52.0)
    vertebra = np.hypot(spine_a, spine_b) - 15.0
    canal = np.hypot(spine_a, spine_b - 24.0) - 6.0
    # Towards the apex the liver rises on the RV side as the lungs give way to the diaphragm.
    low = np.clip((g.s_ed - 0.35) / 0.65, 0.0, 1.0)
    liver = np.where(low > 0.05, _ellipse_sd(g.a - 25.0, g.b - (epi0 + 15.0), 70.0 * low, 45.0 * low, an.lung_lumps), np.inf)
    heart_sd = np.minimum(heart_ed.lv_epi, heart_ed.rv_outer)
    organs = np.minimum(np.minimum(aorta, vertebra), liver)
    clear = (heart_sd > 5.0) & (organs > 5.0) & (g.body_sd < -(wall + 4.0))
    shrink = 1.0 - 0.45 * np.clip(g.s_ed, 0.0, 1.0)
    la, lb = an.lung_axes[0] * shrink, an.lung_axes[1] * shrink
    lung_l = _ellipse_sd(g.a + epi0 + 6.0 + la, g.b + 0.25 * lb, la, lb, an.lung_lumps)
    lung_r = _ellipse_sd(g.a - (epi0 + an.rv_thickness + 10.0 + la), g.b + 0.15 * lb, la, lb, an.lung_lumps[::-1])
    lungs = (np.minimum(lung_l, lung_r) < 0) & clear
    img = np.where(lungs, np.where(tex.fine > 2.0, 0.5 * it["vessel"], it["lung"] * (1.0 + 0.5 * tex.patches)), img)

    inner = g.body_sd < -an.fat_mm
    img = np.where(inner & (liver < 0), 1.3 * it["muscle"] * (1.0 + 0.08 * tex.fine), img)
    img = np.where(inner & (vertebra < 0), it["muscle"] * (1.0 + 0.2 * tex.tissue), img)
    img = np.where(inner & (canal < 0), it["vessel"], img)
    return np.where(aorta < 0, it["vessel"] * (1.0 + 0.03 * tex.fine), img)


INT16_MAX = 32767


def _render(an: Anatomy, g: _Geometry, h: _Heart, tex: _Textures, surroundings: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """The MR image (Z, Y, X) float32 of one frame: non-negative whole numbers (it is stored
    as int16, as scanners do); ``rng`` draws only its noise."""
    it = an.intensities
    heart_sd = np.minimum(h.lv_epi, h.rv_outer)
    inside = g.body_sd < -(an.fat_mm + an.muscle_mm)
    img = np.where((heart_sd >= 0) & (heart_sd < 3.5) & (tex.patches > 0.0) & inside, it["fat"], surroundings)
    img = np.where(h.atrium < 2.5, it["myocardium"], img)
    img = np.where(h.atrium < 0, 0.9 * (1.0 + 0.04 * tex.fine), img)
    img = np.where(h.rv_outer < 0, it["myocardium"], img)
    img = np.where(h.lv_epi < 0, it["myocardium"] * (1.0 + 0.06 * tex.fine), img)
    blood = 1.0 + 0.04 * tex.tissue
    img = np.where(h.lv_cavity < 0, blood, img)
    img = np.where(h.papillary < 0, it["myocardium"], img)
    img = np.where((h.rv_outer < -RV_WALL_MM) & (h.lv_epi >= 0), blood, img)

    sz, sy, sx = an.spacing
    img = ndimage.gaussian_filter(img, sigma=(0.0, 0.6, 0.6 * sy / sx))  # in-plane point spread
    img = np.clip(img, 0.0, None) ** an.gamma

    nz, ny, nx = an.shape
    yy = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy)[None, :, None]
    xx = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx)[None, None, :]
    img = img * np.exp(an.bias_strength * tex.bias + an.bias_gradient[0] * yy + an.bias_gradient[1] * xx)

    # Rician noise: the magnitude of the signal plus complex Gaussian noise.
    sigma = an.noise_fraction
    real = img + sigma * rng.standard_normal(an.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(an.shape, dtype=np.float32)
    return np.rint(np.minimum(np.hypot(real, imag) * an.intensity_scale, INT16_MAX)).astype(np.float32)


def affine_of(an: Anatomy) -> np.ndarray:
    """NIfTI affine: axis-aligned, ``diag(sx, sy, sz)``, with the patient's origin."""
    return axis_affine(an.spacing, an.origin)


def patient_seeds(seed: int, number: int) -> list[np.random.SeedSequence]:
    """Independent streams of patient ``number``: anatomy, textures, ED noise, ES noise."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(number,)).spawn(4)


def make_patient(
    seed: int, number: int, cfg: PhantomConfig = PhantomConfig(), patients: int = 1
) -> tuple[Case, Case]:
    """The ED and ES cases of patient ``number`` (1-based). ``patients`` only widens the id."""
    anat_ss, tex_ss, ed_ss, es_ss = patient_seeds(seed, number)
    an = draw_anatomy(np.random.default_rng(anat_ss), cfg)
    geom = _geometry(an)
    tex = _textures(np.random.default_rng(tex_ss), an.shape)
    pid = patient_id(number, patients)
    hearts = {frame: _heart(an, geom, frame) for frame in FRAMES}
    surroundings = _surroundings(an, geom, tex, hearts["ED"])
    cases = []
    for frame, ss in zip(FRAMES, (ed_ss, es_ss)):
        heart = hearts[frame]
        cases.append(
            Case(
                case_id=case_id(pid, frame),
                patient_id=pid,
                image=_render(an, geom, heart, tex, surroundings, np.random.default_rng(ss)),
                label=_labels(heart),
                spacing=an.spacing,
                affine=affine_of(an),
                sources=(),
                class_names=cfg.class_names,
            )
        )
    return cases[0], cases[1]


def _write_patient(root: Path, job: tuple[int, int, int, PhantomConfig]) -> list[str]:
    seed, number, patients, cfg = job
    written = []
    for case in make_patient(seed, number, cfg, patients):
        write_nifti(root / "imagesTr" / f"{case.case_id}_0000.nii.gz", case.image.astype(np.int16), case.affine)
        write_nifti(root / "labelsTr" / f"{case.case_id}.nii.gz", case.label, case.affine)
        written.append(case.case_id)
    return written


def write_phantom(
    out: Path,
    patients: int,
    seed: int = 0,
    cfg: PhantomConfig = PhantomConfig(),
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
    overwrite: bool = False,
) -> Path:
    """Generate ``patients`` patients into ``out`` in the nnU-Net raw layout, plus a split.

    The folder appears complete or not at all: it is built next to ``out`` and renamed.
    An existing ``out`` must be empty or a phantom folder written earlier (then replaced);
    anything in it that no phantom wrote is deleted only with ``overwrite``.
    ``workers`` processes share the patients (default: one per CPU); ``progress`` shows a
    bar (default: when stderr is a terminal).
    """
    out = Path(out)
    check_phantom_target(out, patients, seed, overwrite)
    pids = [patient_id(n, patients) for n in range(1, patients + 1)]

    def finish(folder: Path, done: list[list[str]]) -> None:
        case_ids = [cid for ids in done for cid in ids]
        (folder / "dataset.json").write_text(phantom_dataset_json(
            "cctr cardiac cine-MRI phantom",
            "Procedural ACDC-like short-axis cine MRI, ED and ES frames per patient.",
            "cineMRI", cfg.class_names, case_ids,
            {cid: cid.rsplit("_", 1)[0] for cid in case_ids},
            {"seed": seed, "patients": patients, "config": asdict(cfg)},
        ))
        save_split(draw_split(pids, seed), folder / SPLIT_FILENAME)

    jobs = [(seed, n, patients, cfg) for n in range(1, patients + 1)]
    return build_phantom_folder(out, _write_patient, jobs, finish, workers, progress)
