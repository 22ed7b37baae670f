"""A small generated dataset of a geometry the cardiac defaults were never tuned for: isotropic
volumes (default 2 mm voxels, 80-100 voxels per axis), three foreground organs in a body, CT
(Hounsfield units, air at -1000) or MR-like intensities, written in nnU-Net's raw layout with a
``split.json``. Used by the plan tests (small shapes) and by ``scripts/make_isotropic_set.py``
(the measurement set).

Each patient is one volume. Between patients the body sits elsewhere in the field of view
(+-15 mm), the organs move (+-6 mm) and change size (+-15 %), the content turns about z
(+-12 deg) and a smooth random deformation (a few mm) is added, so identity overlay is poor,
a rigid shift recovers part of it and a deformable registration the rest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from cctr.seg.data.case import spacing_affine
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.split import SPLIT_FILENAME, draw_split, save_split

CLASS_NAMES = ("background", "liver", "kidney", "spleen")
# organ centre (z, y, x) mm from the body centre, semi-axes mm, CT value (HU), MR value
ORGANS = (
    ((10.0, -5.0, -30.0), (45.0, 35.0, 35.0), 60.0, 420.0),
    ((-30.0, 25.0, 35.0), (25.0, 15.0, 15.0), 160.0, 700.0),
    ((25.0, 10.0, 40.0), (25.0, 20.0, 18.0), 105.0, 560.0),
)


@dataclass(frozen=True)
class IsoConfig:
    shape_range: tuple[int, int] = (80, 100)  # voxels per axis, drawn per axis and patient
    spacing: float = 2.0  # mm, every axis
    modality: str = "CT"  # 'CT' (HU) or 'MR' (non-negative magnitudes, per-patient gain)
    body_offset_mm: float = 15.0
    organ_jitter_mm: float = 6.0
    size_jitter: float = 0.15
    rotation_deg: float = 12.0
    warp_mm: float = 4.0


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], knots: int = 5) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled (cubic) to ``shape``."""
    coarse = rng.uniform(-1.0, 1.0, size=(knots, knots, knots))
    return ndimage.zoom(coarse, [n / knots for n in shape], order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]


def make_case(rng: np.random.Generator, cfg: IsoConfig = IsoConfig()) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One patient: image float32 (Z, Y, X), label uint8 (Z, Y, X), spacing (z, y, x) mm."""
    shape = tuple(int(rng.integers(cfg.shape_range[0], cfg.shape_range[1] + 1)) for _ in range(3))
    spacing = (cfg.spacing,) * 3
    axes = [(np.arange(n) - (n - 1) / 2.0) * cfg.spacing for n in shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (Z, Y, X, 3) mm from the volume centre
    # smooth deformation of the scene, then the body frame (offset, turn about z)
    warp = np.stack([_smooth_noise(rng, shape) for _ in range(3)], axis=-1) * cfg.warp_mm
    body_centre = rng.uniform(-cfg.body_offset_mm, cfg.body_offset_mm, size=3)
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    local = (pts + warp - body_centre) @ rot  # body frame: R^T (p - centre)
    ct = cfg.modality.upper() == "CT"
    body_axes = np.array([400.0, rng.uniform(60.0, 72.0), rng.uniform(74.0, 88.0)])
    body_r = np.sqrt(((local / body_axes) ** 2).sum(-1))
    image = np.full(shape, -1000.0 if ct else 0.0, np.float32)
    texture = _smooth_noise(rng, shape, knots=12)
    image[body_r < 1.0] = (30.0 + 25.0 * texture[body_r < 1.0]) if ct else (220.0 + 60.0 * texture[body_r < 1.0])
    fat = (body_r < 1.0) & (body_r > 0.88)
    image[fat] = -100.0 if ct else 520.0
    spine = np.hypot(local[..., 1] - 0.75 * body_axes[1], local[..., 2]) < 11.0
    image[spine & (body_r < 1.0)] = 650.0 if ct else 90.0
    label = np.zeros(shape, np.uint8)
    for k, (centre, radii, hu, mr) in enumerate(ORGANS, start=1):
        ctr = np.asarray(centre) + rng.normal(0.0, cfg.organ_jitter_mm, size=3)
        rad = np.asarray(radii) * rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter, size=3)
        inside = (((local - ctr) / rad) ** 2).sum(-1) < 1.0
        label[inside] = k
        image[inside] = (hu + 10.0 * texture[inside]) if ct else (mr + 40.0 * texture[inside])
    if ct:
        image = np.rint(image + rng.normal(0.0, 15.0, size=shape)).astype(np.float32)
    else:
        gain = rng.uniform(0.6, 1.6) * np.exp(0.15 * _smooth_noise(rng, shape, knots=3))
        image = np.abs(image * gain + rng.normal(0.0, 12.0, size=shape)).astype(np.float32)
    return image, label, spacing


def write_isotropic_set(root: Path, patients: int, seed: int = 0, cfg: IsoConfig = IsoConfig(),
                        channel_name: str = "CT") -> Path:
    """nnU-Net raw layout (imagesTr, labelsTr, dataset.json) plus a seeded ``split.json``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = [f"iso_{i:03d}" for i in range(patients)]
    for case_id in ids:
        image, label, spacing = make_case(rng, cfg)
        affine = spacing_affine(spacing)
        write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", image, affine)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
    meta = {"channel_names": {"0": channel_name}, "labels": {n: i for i, n in enumerate(CLASS_NAMES)},
            "numTraining": patients, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    save_split(draw_split(ids, seed), root / SPLIT_FILENAME)
    return root
