"""A second anatomy: a procedural abdominal CT phantom, Synapse-like (BTCV's 8 scored organs).

Each patient is ONE contrast CT volume ``(Z, Y, X)`` in Hounsfield units: axial slices, slice
0 cranial (just above the liver dome), array columns running towards the patient's left and
rows towards the back, as CT is displayed (the patient's right on the image's left). Labels
follow the Synapse release's order (:data:`ABDOMEN_CLASSES`): 0 background, 1 spleen,
2 right kidney, 3 left kidney, 4 gallbladder, 5 liver, 6 stomach, 7 aorta, 8 pancreas.

Anatomy, in mm in a body frame centred on the body outline (``x`` towards the patient's left,
``y`` towards the back, ``z`` caudal from the liver dome), slightly rotated per patient and
bent by a smooth random warp: an elliptical body (flatter back) with subcutaneous fat and a
muscle wall (ribs in its upper part), visceral fat with bowel loops and gas; a vertebra
(bright cortex, spinal canal, spinous process), psoas and back muscles, the inferior vena
cava, lung bases in the top slices; and the organs as smooth, lumpy ellipsoids or tubes
placed anatomically: liver right-upper (right lobe plus a left lobe across the midline),
gallbladder under it, spleen left-posterior, stomach left-upper with a gas cap in front,
kidneys posterior on both sides of the spine (the right one lower, each with a hilum and a
darker medulla), the aorta a vertical tube in front of the spine, and the pancreas a tube
curving across the midline from its head on the right to its tail at the spleen. Organ
sizes and positions scale with the patient and vary per organ, so organs of very different
sizes are all present (the aorta and gallbladder are tens of times smaller than the liver).

Sizes (:class:`AbdomenPhantomConfig`): the default is sized for the CPU: 128 x 128 in plane
over a 320-440 mm field of view (2.5-3.4 mm pixels) and 4-6 mm slices. The real data's
grid, 512 x 512 at 0.6-0.86 mm and 2.5-5 mm slices, is :meth:`AbdomenPhantomConfig.full_size`,
for scale benchmarks; both see the same field of view and anatomy.

Everything is a pure function of ``(seed, patient number, config)``; patient ``k`` draws
from its own seed sequence, so it does not depend on how many patients are made.

:func:`write_abdomen_phantom` writes either layout the readers take:

- ``nnunet`` (default): ``imagesTr/caseXXXX_0000.nii.gz`` (int16 HU), ``labelsTr/``,
  ``dataset.json`` and ``split.json``, as the cardiac phantom does;
- ``synapse``: TransUNet's release: HU clipped to [-125, 275] and scaled to [0, 1], training
  and validation cases as 2D slices ``train_npz/caseXXXX_sliceYYY.npz`` (``image``,
  ``label``), test cases as volumes ``test_vol_h5/caseXXXX.npy.h5``, the lists
  ``lists/lists_Synapse/train.txt`` and ``test_vol.txt``, plus ``split.json`` (the same
  split as the nnU-Net layout; the lists alone give its train and test groups) and
  ``.cctr_phantom.json`` (provenance and each case's real spacing, which the release's
  files do not carry: pass its ``spacing`` mapping to ``open_dataset`` for millimetres).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
from scipy import ndimage

from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.phantom_common import (
    MARKER_FILE, Range, axis_affine, build_phantom_folder, check_level, check_phantom_target, ellipse_sd,
    phantom_dataset_json,
    uniform, upsampled_noise,
)
from cctr.seg.data.readers.synapse import SYNAPSE_CLASSES
from cctr.seg.data.split import SPLIT_FILENAME, Split, draw_split, save_split

ABDOMEN_CLASSES = SYNAPSE_CLASSES
SPLEEN, KIDNEY_R, KIDNEY_L, GALLBLADDER, LIVER, STOMACH, AORTA, PANCREAS = range(1, 9)
LAYOUTS = ("nnunet", "synapse")
SYNAPSE_HU_WINDOW = (-125.0, 275.0)  # what TransUNet's release clipped to before scaling to [0, 1]
HU_LIMITS = (-1024.0, 3071.0)  # a 12-bit CT's range
AIR_HU = -1000.0
# The seed sequence's entropy is (seed, this), so that the abdomen and the cardiac phantom
# of one seed draw unrelated numbers.
_STREAM = 2


@dataclass(frozen=True)
class AbdomenPhantomConfig:
    """Grid and variability of the abdominal phantom; ranges (low, high) are drawn uniformly."""

    matrix: int = 128  # in-plane voxels per axis
    fov_mm: Range = (320.0, 440.0)  # in-plane field of view, chosen to fit the body
    slice_spacing_mm: Range = (4.0, 6.0)
    coverage_mm: Range = (230.0, 270.0)  # cranio-caudal length of the stack, before the patient scale
    body_width_mm: Range = (250.0, 330.0)  # left-right
    body_depth_ratio: Range = (0.68, 0.82)  # front-back depth / width
    patient_scale: Range = (0.9, 1.1)  # organ sizes and positions, one factor per patient
    organ_scale: Range = (0.85, 1.15)  # and one per organ on top
    organ_shift_mm: float = 7.0  # each organ within +- this of its place, per axis
    rotation_deg: float = 6.0  # in-plane rotation of the whole patient within +- this
    warp_mm: Range = (2.0, 5.0)  # std of the smooth random warp
    noise_hu: Range = (8.0, 18.0)  # std of the image noise

    def __post_init__(self) -> None:
        if self.matrix < 32:
            raise ValueError(f"AbdomenPhantomConfig.matrix: need at least 32 voxels in plane, got {self.matrix}")
        for name, value in asdict(self).items():
            if isinstance(value, tuple) and value[0] > value[1]:
                raise ValueError(f"AbdomenPhantomConfig.{name}: low {value[0]} > high {value[1]}")

    def at_level(self, level: int) -> "AbdomenPhantomConfig":
        """This phantom at difficulty ``level``: 1 is itself; 2 and 3 widen how subjects differ,
        in anatomy (body, organ sizes and places, pose, the smooth warp), field of view and
        image noise, with the grid (``matrix``, slice spacing) kept."""
        check_level(level)
        if level == 1:
            return self
        wide = level == 3
        return replace(
            self,
            fov_mm=(300.0, 480.0) if wide else (310.0, 460.0),
            body_width_mm=(220.0, 360.0) if wide else (235.0, 345.0),
            patient_scale=(0.8, 1.2) if wide else (0.85, 1.15),
            organ_scale=(0.7, 1.3) if wide else (0.78, 1.22),
            organ_shift_mm=18.0 if wide else 12.0,
            rotation_deg=25.0 if wide else 15.0,
            warp_mm=(4.0, 10.0) if wide else (3.0, 7.5),
            noise_hu=(15.0, 45.0) if wide else (12.0, 30.0),
        )

    @classmethod
    def full_size(cls) -> "AbdomenPhantomConfig":
        """The real scans' grid: 512 x 512 at 0.6-0.86 mm in plane, 2.5-5 mm slices."""
        return cls(matrix=512, slice_spacing_mm=(2.5, 5.0))


@dataclass(frozen=True)
class Blob:
    """A smooth deformed ellipsoid: centre and semi-axes (z, y, x) mm, in-plane rotation,
    radius harmonics, and how far its in-plane centre drifts per mm of z (y, x)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    angle: float = 0.0
    lumps: tuple[tuple[float, float], ...] = ()
    drift: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Anatomy:
    """One patient's drawn geometry (mm, body frame) and appearance (HU)."""

    shape: tuple[int, int, int]  # (Z, Y, X)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # world mm of voxel (x, y, z) = 0, NIfTI order
    z_top: float  # body-frame z of slice 0 (negative: above the liver dome)
    body_offset: tuple[float, float]  # body centre from the image centre, (y, x) mm
    rotation: float  # radians
    body_half: tuple[float, float, float]  # half width, front and back half depth, mm
    body_lumps: tuple[tuple[float, float], ...]
    fat_mm: float
    muscle_mm: float
    warp_mm: float
    spine: tuple[float, float, float]  # vertebral body centre (y, x) and radius, mm
    organs: dict  # name -> Blob: liver, liver_left, spleen, stomach, gallbladder, kidney_r, kidney_l, lung_r, lung_l
    aorta: tuple[float, float, float]  # centre (y, x) at slice 0 and radius, mm
    aorta_drift: tuple[float, float]  # (y, x) mm per mm of z
    pancreas: tuple[tuple[float, float, float, float], ...]  # control points (z, y, x, radius), head to tail
    hu: dict  # tissue name -> HU
    noise_hu: float


def case_name(number: int) -> str:
    """Case id = patient id, as the Synapse release names them (``case0001``)."""
    if not 0 <= number <= 9999:
        raise CaseError(f"abdomen phantom: patient number {number} does not fit the release's caseXXXX names")
    return f"case{number:04d}"


def patient_seeds(seed: int, number: int) -> list[np.random.SeedSequence]:
    """Independent streams of patient ``number``: anatomy, textures, image noise."""
    return np.random.SeedSequence(entropy=(seed, _STREAM), spawn_key=(number,)).spawn(3)


def _lumps(rng: np.random.Generator, amplitude: float) -> tuple[tuple[float, float], ...]:
    return tuple((float(rng.uniform(0, amplitude)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))


def _jitter(rng: np.random.Generator, cfg: AbdomenPhantomConfig, centre: tuple[float, float, float]) -> tuple[float, float, float]:
    d = cfg.organ_shift_mm
    return tuple(float(c + rng.uniform(-d, d)) for c in centre)  # type: ignore[return-value]


def _blob(rng: np.random.Generator, cfg: AbdomenPhantomConfig, centre, semi, angle_deg: float = 0.0,
          spread_deg: float = 10.0, lumps: float = 0.06, drift=(0.0, 0.0)) -> Blob:
    """An organ near ``centre`` with about ``semi``, drawn with the config's variability."""
    k = uniform(rng, cfg.organ_scale)
    angle = np.deg2rad(angle_deg + rng.uniform(-spread_deg, spread_deg))
    return Blob(centre=_jitter(rng, cfg, centre), semi=tuple(float(k * s) for s in semi), angle=float(angle),
                lumps=_lumps(rng, lumps), drift=(float(drift[0]), float(drift[1])))


def draw_anatomy(rng: np.random.Generator, cfg: AbdomenPhantomConfig) -> Anatomy:
    """Draw one patient; the order of draws is part of the phantom's definition."""
    s = uniform(rng, cfg.patient_scale)
    width = uniform(rng, cfg.body_width_mm) * s
    W = width / 2
    H = W * uniform(rng, cfg.body_depth_ratio)
    Hb = H * float(rng.uniform(0.82, 0.95))  # the back is flatter than the belly
    # The scanner's field of view is set to fit the body, as a technologist does.
    fov = float(np.clip(width * rng.uniform(1.12, 1.3), *cfg.fov_mm))
    sxy = fov / cfg.matrix
    sz = uniform(rng, cfg.slice_spacing_mm)
    margin = float(rng.uniform(5.0, 20.0))  # stack starts this far above the liver dome
    nz = max(8, int(round((uniform(rng, cfg.coverage_mm) * s + margin) / sz)))
    n = cfg.matrix

    r_v = float(rng.uniform(16.0, 21.0) * s)
    spine_y = Hb - float(rng.uniform(55.0, 72.0)) * s
    spine_x = float(rng.uniform(-4.0, 4.0))
    r_a = float(rng.uniform(9.0, 12.5) * s)
    aorta = (spine_y - r_v - r_a - float(rng.uniform(2.0, 6.0)), spine_x + 0.6 * r_v + float(rng.uniform(-3, 3)), r_a)

    def blob(*args, **kw) -> Blob:
        return _blob(rng, cfg, *args, **kw)

    # Beside the spine, but never into the flank wall of a slim patient.
    kidney_x = min(r_v + float(rng.uniform(46.0, 58.0)) * s, 0.52 * W)
    organs = {
        "liver": blob((75 * s, -0.05 * H, -0.45 * W), (80 * s, 0.7 * H, 0.5 * W), lumps=0.07),
        "liver_left": blob((45 * s, -0.45 * H, 0.02 * W), (45 * s, 0.3 * H, 0.4 * W), angle_deg=-10, lumps=0.08),
        "spleen": blob((62 * s, 0.3 * H, 0.57 * W), (52 * s, 50 * s, 26 * s), angle_deg=-30, lumps=0.08),
        "stomach": blob((78 * s, -0.2 * H, 0.3 * W), (58 * s, 0.3 * H, 0.28 * W), angle_deg=20, lumps=0.1,
                        drift=(-0.12, -0.35)),
        "gallbladder": blob((125 * s, -0.4 * H, -0.3 * W), (32 * s, 16 * s, 13 * s), angle_deg=30, lumps=0.05,
                            drift=(-0.15, 0.05)),
        "kidney_r": blob((168 * s, spine_y + 4, spine_x - kidney_x), (55 * s, 22 * s, 28 * s), angle_deg=-35, lumps=0.04),
        "kidney_l": blob((152 * s, spine_y + 4, spine_x + kidney_x), (55 * s, 22 * s, 28 * s), angle_deg=35, lumps=0.04),
        "lung_r": blob((-38 * s, 0.45 * H, -0.5 * W), (65 * s, 0.5 * H, 0.42 * W), lumps=0.05),
        "lung_l": blob((-32 * s, 0.45 * H, 0.5 * W), (65 * s, 0.5 * H, 0.42 * W), lumps=0.05),
    }
    ay, ax = aorta[0], aorta[1]
    # Pancreas: head right of the midline by the duodenum, body in front of the aorta,
    # tail up at the spleen's hilum, in front of the left kidney.
    z_head = 132 * s + float(rng.uniform(-8, 8))
    pancreas = (
        (z_head, ay - 20 * s, ax - 45 * s, 13 * s * uniform(rng, cfg.organ_scale)),
        (z_head - 12 * s, ay - 38 * s, ax + 5 * s, 9 * s * uniform(rng, cfg.organ_scale)),
        (z_head - 25 * s, spine_y - 22 * s, 0.48 * W, 8 * s * uniform(rng, cfg.organ_scale)),
    )
    contrast = float(rng.uniform(0.85, 1.15))  # how much contrast reached the vessels and kidneys
    hu = {
        "fat": float(rng.uniform(-120, -85)),
        "muscle": float(rng.uniform(40, 60)),
        "bowel": float(rng.uniform(20, 40)),
        "gas": AIR_HU,
        "lung": float(rng.uniform(-900, -800)),
        "cortical": float(rng.uniform(600, 800)),
        "cancellous": float(rng.uniform(180, 280)),
        "csf": float(rng.uniform(0, 15)),
        "liver": float(rng.uniform(55, 70)),
        "spleen": float(rng.uniform(45, 60)),
        "kidney": float(rng.uniform(140, 175) * contrast),
        "aorta": float(rng.uniform(180, 230) * contrast),
        "ivc": float(rng.uniform(100, 140) * contrast),
        "pancreas": float(rng.uniform(35, 50)),
        "stomach_wall": float(rng.uniform(35, 50)),
        "stomach_fluid": float(rng.uniform(5, 25)),
        "bile": float(rng.uniform(0, 20)),
    }
    return Anatomy(
        shape=(nz, n, n),
        spacing=(sz, sxy, sxy),
        origin=(float(-(n - 1) / 2 * sxy), float(-(n - 1) / 2 * sxy + rng.uniform(-30, 30)), float(rng.uniform(-500, -200))),
        z_top=-margin,
        body_offset=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
        rotation=float(np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))),
        body_half=(W, H, Hb),
        body_lumps=_lumps(rng, 0.04),
        fat_mm=float(W * rng.uniform(0.05, 0.18)),
        muscle_mm=float(rng.uniform(6, 12)),
        warp_mm=uniform(rng, cfg.warp_mm),
        spine=(spine_y, spine_x, r_v),
        organs=organs,
        aorta=aorta,
        aorta_drift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
        pancreas=pancreas,
        hu=hu,
        noise_hu=uniform(rng, cfg.noise_hu),
    )


@dataclass(frozen=True)
class _Grid:
    """Body-frame coordinates (mm) of every voxel, after the patient's rotation and warp."""

    z: np.ndarray  # (Z, 1, 1)
    y: np.ndarray  # (Z, Y, X)
    x: np.ndarray  # (Z, Y, X)


@dataclass(frozen=True)
class _Textures:
    """Per-patient noise fields (Z, Y, X), zero mean unit std."""

    coarse: np.ndarray  # organ shading and bowel loops
    fine: np.ndarray  # vessels, lobulation, gas pockets
    ribs: np.ndarray  # where ribs cross the wall


def _grid(an: Anatomy, rng: np.random.Generator) -> _Grid:
    nz, ny, nx = an.shape
    sz, sy, sx = an.spacing
    z = (an.z_top + np.arange(nz, dtype=np.float32) * sz)[:, None, None]
    y0 = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy - an.body_offset[0])[None, :, None]
    x0 = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx - an.body_offset[1])[None, None, :]
    c, s = np.float32(np.cos(an.rotation)), np.float32(np.sin(an.rotation))
    # Knots of the warp ~60 mm apart: it bends organs without breaking them up.
    knots = [(max(1.0, 40.0 / sz), 60.0 / sy, 60.0 / sx)]
    warp = np.float32(an.warp_mm)
    y = (y0 * c - x0 * s) + warp * upsampled_noise(rng, an.shape, knots)
    x = (y0 * s + x0 * c) + warp * upsampled_noise(rng, an.shape, knots)
    return _Grid(z=z, y=y, x=x)


def _textures(an: Anatomy, rng: np.random.Generator) -> _Textures:
    sz, sy, sx = an.spacing

    def mm(zyx: tuple[float, float, float]) -> tuple[float, float, float]:
        # Knot spacing given in mm, so the CPU grid and the full-size grid show the same texture.
        return max(1.0, zyx[0] / sz), max(1.0, zyx[1] / sy), max(1.0, zyx[2] / sx)

    return _Textures(
        coarse=upsampled_noise(rng, an.shape, [mm((10, 8, 8)), mm((20, 16, 16)), mm((40, 32, 32))]),
        fine=upsampled_noise(rng, an.shape, [mm((4, 3, 3)), mm((8, 6, 6))]),
        ribs=upsampled_noise(rng, an.shape, [mm((25, 20, 20))]),
    )


def _slab(g: _Grid, lo: float, hi: float) -> slice:
    """The slices whose z lies in [lo, hi] mm (possibly empty)."""
    z = g.z[:, 0, 0]
    idx = np.flatnonzero((z >= lo) & (z <= hi))
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def blob_sd(g: _Grid, b: Blob) -> np.ndarray:
    """Signed distance (mm, (Z, Y, X), negative inside, ``inf`` far above or below) of a blob:
    per slice, an ellipse whose semi-axes follow the ellipsoid's profile in z."""
    out = np.full(g.x.shape, np.inf, dtype=np.float32)
    cz, cy, cx = b.centre
    rz, ry, rx = b.semi
    sl = _slab(g, cz - rz, cz + rz)
    if sl.stop <= sl.start:
        return out
    dz = g.z[sl] - np.float32(cz)
    prof = np.sqrt(np.clip(1.0 - (dz / np.float32(rz)) ** 2, 0.0, 1.0))
    dy = g.y[sl] - (cy + b.drift[0] * dz)
    dx = g.x[sl] - (cx + b.drift[1] * dz)
    c, s = np.float32(np.cos(b.angle)), np.float32(np.sin(b.angle))
    a_, b_ = dx * c + dy * s, -dx * s + dy * c
    sd = ellipse_sd(a_, b_, rx * prof, ry * prof, b.lumps).astype(np.float32)
    out[sl] = np.where(prof > 0.05, sd, np.inf)
    return out


def _bezier(points: np.ndarray, samples: int) -> np.ndarray:
    """Points on the quadratic Bezier curve through the 3 control rows of ``points``."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    p0, p1, p2 = points
    # The middle control point is moved so that the curve passes through it at t = 1/2.
    c = 2 * p1 - (p0 + p2) / 2
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * c + t ** 2 * p2


def tube_sd(g: _Grid, control: tuple[tuple[float, float, float, float], ...], z_stretch: float) -> np.ndarray:
    """Signed distance (mm, ``inf`` outside its slab) of a tube along a Bezier curve through
    ``control`` (z, y, x, radius): a union of spheres, squashed ``z_stretch`` times taller."""
    pts = _bezier(np.asarray(control, dtype=np.float64), 24)
    out = np.full(g.x.shape, np.inf, dtype=np.float32)
    reach = float(pts[:, 3].max()) * z_stretch
    sl = _slab(g, float(pts[:, 0].min()) - reach, float(pts[:, 0].max()) + reach)
    if sl.stop <= sl.start:
        return out
    z, y, x = g.z[sl], g.y[sl], g.x[sl]
    best = np.full(x.shape, np.inf, dtype=np.float32)
    for pz, py, px, r in pts:
        d = np.sqrt(((z - np.float32(pz)) / np.float32(z_stretch)) ** 2 + (y - np.float32(py)) ** 2 + (x - np.float32(px)) ** 2)
        np.minimum(best, d - np.float32(r), out=best)
    out[sl] = best
    return out


def _body_sd(an: Anatomy, g: _Grid) -> np.ndarray:
    W, H, Hb = an.body_half
    # A little wider towards the lower ribs and the flanks, then narrower again.
    widen = 1.0 + 0.04 * np.sin(np.clip(g.z / 250.0, 0.0, 1.0) * np.pi)
    return ellipse_sd(g.x, g.y, W * widen, np.where(g.y > 0, Hb, H) * widen, an.body_lumps).astype(np.float32)


@dataclass(frozen=True)
class _Scene:
    """Signed distances (mm, negative inside) of every structure of one patient."""

    body: np.ndarray
    vertebra: np.ndarray
    canal: np.ndarray
    spinous: np.ndarray
    back_muscles: np.ndarray
    psoas: np.ndarray
    ivc: np.ndarray
    aorta: np.ndarray
    pancreas: np.ndarray
    organs: dict  # name -> signed distance, the Blob organs of Anatomy.organs
    hilum_r: np.ndarray
    hilum_l: np.ndarray


def _hilum(g: _Grid, kidney: Blob, spine_x: float) -> np.ndarray:
    """The renal sinus: a notch in the kidney's medial, front side over its middle half."""
    cz, cy, cx = kidney.centre
    rz, ry, rx = kidney.semi
    medial = -1.0 if cx > spine_x else 1.0
    r = 0.45 * min(ry, rx)
    return blob_sd(g, Blob(centre=(cz, cy - 0.35 * ry, cx + medial * 0.75 * rx), semi=(0.5 * rz, r, r)))


def _scene(an: Anatomy, g: _Grid) -> _Scene:
    spine_y, spine_x, r_v = an.spine
    vert_d = np.hypot(g.y - spine_y, g.x - spine_x)
    canal = np.hypot(g.y - (spine_y + r_v + 9.0), g.x - spine_x) - 8.0
    spinous = ellipse_sd(g.x - spine_x, g.y - (spine_y + r_v + 30.0), 5.0, 22.0).astype(np.float32)
    back = np.minimum(
        ellipse_sd(g.x - (spine_x - 28.0), g.y - (spine_y + r_v + 28.0), 24.0, 22.0),
        ellipse_sd(g.x - (spine_x + 28.0), g.y - (spine_y + r_v + 28.0), 24.0, 22.0),
    ).astype(np.float32)
    # The psoas muscles appear beside the spine from the kidneys down and grow caudally.
    kz = an.organs["kidney_l"].centre[0]
    grow = np.clip((g.z - (kz - 20.0)) / 90.0, 0.0, 1.0)
    psoas = np.minimum(
        ellipse_sd(g.x - (spine_x - r_v - 12.0), g.y - (spine_y + 4.0), 18.0 * grow, 16.0 * grow),
        ellipse_sd(g.x - (spine_x + r_v + 12.0), g.y - (spine_y + 4.0), 18.0 * grow, 16.0 * grow),
    )
    psoas = np.where(grow > 0.1, psoas, np.inf).astype(np.float32)
    ivc = ellipse_sd(g.x - (spine_x - r_v - 10.0), g.y - (spine_y - r_v - 8.0), 13.0, 9.0).astype(np.float32)
    ay, ax, r_a = an.aorta
    dz = g.z - np.float32(an.z_top)
    taper = 1.0 - 0.12 * np.clip(dz / 250.0, 0.0, 1.0)  # the aorta narrows a little caudally
    aorta = np.hypot(g.y - (ay + an.aorta_drift[0] * dz), g.x - (ax + an.aorta_drift[1] * dz)) - r_a * taper
    return _Scene(
        body=_body_sd(an, g),
        vertebra=(vert_d - r_v).astype(np.float32),
        canal=canal.astype(np.float32),
        spinous=spinous,
        back_muscles=back,
        psoas=psoas,
        ivc=ivc,
        aorta=aorta.astype(np.float32),
        pancreas=tube_sd(g, an.pancreas, 1.4),
        organs={name: blob_sd(g, b) for name, b in an.organs.items()},
        hilum_r=_hilum(g, an.organs["kidney_r"], spine_x),
        hilum_l=_hilum(g, an.organs["kidney_l"], spine_x),
    )


def _labels(an: Anatomy, sc: _Scene) -> np.ndarray:
    """uint8 (Z, Y, X) in :data:`ABDOMEN_CLASSES` order. Organs stay inside the abdominal
    cavity and off the spine and back muscles; where two meet, the later one below wins."""
    cavity = sc.body < -(an.fat_mm + an.muscle_mm + 2.0)
    allowed = cavity & (sc.vertebra > 3.0) & (sc.back_muscles > 2.0) & (sc.spinous > 2.0)
    o = sc.organs
    order = (
        (LIVER, np.minimum(o["liver"], o["liver_left"]) < 0),
        (SPLEEN, o["spleen"] < 0),
        (STOMACH, o["stomach"] < 0),
        (PANCREAS, sc.pancreas < 0),
        (AORTA, sc.aorta < 0),
        (KIDNEY_R, (o["kidney_r"] < 0) & (sc.hilum_r >= 0)),
        (KIDNEY_L, (o["kidney_l"] < 0) & (sc.hilum_l >= 0)),
        (GALLBLADDER, o["gallbladder"] < 0),
    )
    out = np.zeros(sc.body.shape, dtype=np.uint8)
    for value, mask in order:
        out[mask & allowed] = value
    return out


def _render(an: Anatomy, g: _Grid, sc: _Scene, tex: _Textures, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The CT image (Z, Y, X) float32 in whole HU; ``rng`` draws only its noise."""
    hu = an.hu
    inner = -(an.fat_mm + an.muscle_mm)
    img = np.full(an.shape, AIR_HU, dtype=np.float32)
    img = np.where(sc.body < 0, hu["fat"] + 8.0 * tex.fine, img)
    wall = (sc.body < -an.fat_mm) & (sc.body >= inner)
    img = np.where(wall, hu["muscle"] + 6.0 * tex.fine, img)
    # Ribs: bright dashes in the side and back of the wall, above the kidneys' lower half.
    upper = g.z < an.organs["kidney_r"].centre[0]
    ribs = wall & upper & (tex.ribs > 0.9) & (g.y > -0.3 * an.body_half[1])
    img = np.where(ribs, hu["cortical"] * 0.8, img)

    # Inside the cavity: fat with bowel loops, more of them low down, some holding gas.
    cavity = sc.body < inner
    depth = np.clip((g.z - 60.0) / 150.0, 0.0, 1.0)
    bowel = cavity & (tex.coarse > 1.1 - 1.1 * depth)
    img = np.where(cavity, hu["fat"] + 10.0 * tex.fine, img)
    img = np.where(bowel, hu["bowel"] + 10.0 * tex.fine, img)
    img = np.where(bowel & (tex.fine > 2.3), hu["gas"], img)
    img = np.where(cavity & (np.minimum(sc.organs["lung_r"], sc.organs["lung_l"]) < 0),
                   hu["lung"] + 20.0 * tex.fine, img)

    body = sc.body < 0
    img = np.where(body & (sc.back_muscles < 0), hu["muscle"] + 6.0 * tex.fine, img)
    img = np.where(cavity & (sc.psoas < 0), hu["muscle"] + 6.0 * tex.fine, img)
    img = np.where(body & (sc.spinous < 0), hu["cortical"], img)
    img = np.where(sc.vertebra < 0, hu["cancellous"] + 30.0 * tex.fine, img)
    img = np.where((sc.vertebra < 0) & (sc.vertebra > -2.5), hu["cortical"], img)
    img = np.where(sc.canal < 0, hu["csf"], img)
    img = np.where(cavity & (sc.ivc < 0), hu["ivc"], img)

    # The organs, exactly where their labels are; the kidney's sinus is fat.
    for hilum in (sc.hilum_r, sc.hilum_l):
        img = np.where(cavity & (hilum < 0) & (sc.vertebra > 3.0), hu["fat"] + 20.0, img)
    shade = 6.0 * tex.coarse
    img = np.where(label == LIVER, hu["liver"] + shade + np.where(tex.fine > 1.6, 45.0, 0.0), img)
    img = np.where(label == SPLEEN, hu["spleen"] + shade, img)
    img = np.where(label == PANCREAS, hu["pancreas"] + 8.0 * tex.fine, img)
    img = np.where(label == AORTA, hu["aorta"], img)
    img = np.where(label == GALLBLADDER, hu["bile"], img)
    stomach = label == STOMACH
    st = sc.organs["stomach"]
    # Wall, fluid, and a gas cap in front (the patient lies on the back; gas rises forwards).
    gas_line = an.organs["stomach"].centre[1] - 0.55 * an.organs["stomach"].semi[1]
    img = np.where(stomach, np.where(st > -4.0, hu["stomach_wall"], hu["stomach_fluid"] + 5.0 * tex.fine), img)
    img = np.where(stomach & (st <= -4.0) & (g.y < gas_line), hu["gas"], img)
    for value in (KIDNEY_R, KIDNEY_L):
        kidney = sc.organs["kidney_r" if value == KIDNEY_R else "kidney_l"]
        # Cortex bright, medulla darker: the corticomedullary look of a contrast CT.
        img = np.where(label == value, np.where(kidney > -6.0, hu["kidney"], 0.7 * hu["kidney"]) + shade, img)

    sy, sx = an.spacing[1], an.spacing[2]
    img = ndimage.gaussian_filter(img, sigma=(0.0, 0.5, 0.5 * sy / sx))  # in-plane point spread
    img = img + an.noise_hu * rng.standard_normal(an.shape, dtype=np.float32)
    return np.rint(np.clip(img, *HU_LIMITS)).astype(np.float32)


def affine_of(an: Anatomy) -> np.ndarray:
    return axis_affine(an.spacing, an.origin)


def make_patient(seed: int, number: int, cfg: AbdomenPhantomConfig = AbdomenPhantomConfig()) -> Case:
    """The CT case of patient ``number`` (1-based), image in HU."""
    anat_ss, tex_ss, noise_ss = patient_seeds(seed, number)
    an = draw_anatomy(np.random.default_rng(anat_ss), cfg)
    tex_rng = np.random.default_rng(tex_ss)
    g = _grid(an, tex_rng)
    tex = _textures(an, tex_rng)
    scene = _scene(an, g)
    label = _labels(an, scene)
    name = case_name(number)
    return Case(
        case_id=name,
        patient_id=name,
        image=_render(an, g, scene, tex, label, np.random.default_rng(noise_ss)),
        label=label,
        spacing=an.spacing,
        affine=affine_of(an),
        sources=(),
        class_names=ABDOMEN_CLASSES,
    )


def to_synapse_intensity(hu: np.ndarray) -> np.ndarray:
    """HU as TransUNet's release stores them: clipped to [-125, 275], scaled to [0, 1], float32."""
    lo, hi = SYNAPSE_HU_WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _write_nnunet_patient(root: Path, job: tuple[int, int, AbdomenPhantomConfig]) -> tuple[str, tuple[float, ...]]:
    seed, number, cfg = job
    case = make_patient(seed, number, cfg)
    # CT is stored as int16 HU, as scanners write it.
    write_nifti(root / "imagesTr" / f"{case.case_id}_0000.nii.gz", case.image.astype(np.int16), case.affine)
    write_nifti(root / "labelsTr" / f"{case.case_id}.nii.gz", case.label, case.affine)
    return case.case_id, case.spacing


def _write_synapse_patient(root: Path, job: tuple[int, int, AbdomenPhantomConfig, bool]) -> tuple[str, tuple[float, ...], int]:
    """One case in TransUNet's layout: 2D slices (training) or one volume (``as_volume``, test)."""
    seed, number, cfg, as_volume = job
    case = make_patient(seed, number, cfg)
    image = to_synapse_intensity(case.image)
    label = case.label.astype(np.float32)  # the release stores labels as float32 too
    if as_volume:
        folder = root / "test_vol_h5"
        folder.mkdir(exist_ok=True)
        with h5py.File(folder / f"{case.case_id}.npy.h5", "w") as h5:
            for key, arr in (("image", image), ("label", label)):
                h5.create_dataset(key, data=arr, compression="gzip", track_times=False)
    else:
        folder = root / "train_npz"
        folder.mkdir(exist_ok=True)
        for z in range(case.shape[0]):
            np.savez_compressed(folder / f"{case.case_id}_slice{z:03d}.npz", image=image[z], label=label[z])
    return case.case_id, case.spacing, case.shape[0]


def _provenance(seed: int, patients: int, cfg: AbdomenPhantomConfig, layout: str) -> dict:
    return {"kind": "abdomen", "layout": layout, "seed": seed, "patients": patients, "config": asdict(cfg)}


def write_abdomen_phantom(
    out: Path,
    patients: int,
    seed: int = 0,
    cfg: AbdomenPhantomConfig = AbdomenPhantomConfig(),
    layout: str = "nnunet",
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
    overwrite: bool = False,
) -> Path:
    """Generate ``patients`` abdominal CT volumes into ``out`` in ``layout`` (``'nnunet'`` or
    ``'synapse'``, see the module docstring), with a split drawn from ``seed``.

    As for the cardiac phantom: the folder appears complete or not at all; an existing
    ``out`` must be empty or a phantom folder (then replaced; what no phantom wrote there
    only with ``overwrite``); ``workers`` processes share
    the patients (default: one per CPU); ``progress`` shows a bar.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise ValueError(f"abdomen phantom: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_phantom_target(out, patients, seed, overwrite)
    pids = [case_name(n) for n in range(1, patients + 1)]
    split = draw_split(pids, seed)
    if layout == "nnunet":
        def finish_nnunet(folder: Path, done: list) -> None:
            case_ids = [cid for cid, _ in done]
            (folder / "dataset.json").write_text(phantom_dataset_json(
                "cctr abdominal CT phantom",
                "Procedural Synapse-like contrast abdominal CT, one volume per patient, HU.",
                "CT", ABDOMEN_CLASSES, case_ids, {cid: cid for cid in case_ids},
                _provenance(seed, patients, cfg, layout),
            ))
            save_split(split, folder / SPLIT_FILENAME)

        jobs = [(seed, n, cfg) for n in range(1, patients + 1)]
        return build_phantom_folder(out, _write_nnunet_patient, jobs, finish_nnunet, workers, progress)

    def finish_synapse(folder: Path, done: list) -> None:
        _write_synapse_lists(folder, split, {cid: nz for cid, _, nz in done})
        save_split(split, folder / SPLIT_FILENAME)
        meta = _provenance(seed, patients, cfg, layout)
        meta["spacing"] = {cid: list(spacing) for cid, spacing, _ in done}
        (folder / MARKER_FILE).write_text(json.dumps(meta, indent=2))

    test = set(split.test)
    jobs = [(seed, n, cfg, pid in test) for n, pid in enumerate(pids, start=1)]
    return build_phantom_folder(out, _write_synapse_patient, jobs, finish_synapse, workers, progress)


def _write_synapse_lists(folder: Path, split: Split, slices_of: dict[str, int]) -> None:
    """``train.txt`` (every slice of the training cases, in the split's training order, so that
    the release's head-of-list labeled sets are the split's) and ``test_vol.txt``."""
    lists = folder / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    train = [f"{cid}_slice{z:03d}" for cid in split.train for z in range(slices_of[cid])]
    (lists / "train.txt").write_text("".join(f"{name}\n" for name in train))
    (lists / "test_vol.txt").write_text("".join(f"{cid}\n" for cid in split.test))


def synapse_spacing(root: Path) -> dict[str, tuple[float, float, float]]:
    """Each case's real spacing (z, y, x) mm of a Synapse-layout phantom folder, for
    ``open_dataset(root, spacing=...)`` (the release's files carry none)."""
    path = Path(root) / MARKER_FILE
    try:
        table = json.loads(path.read_text())["spacing"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CaseError(f"{path}: not a Synapse-layout phantom's provenance file ({exc})") from exc
    return {cid: tuple(float(v) for v in sp) for cid, sp in table.items()}  # type: ignore[misc]
