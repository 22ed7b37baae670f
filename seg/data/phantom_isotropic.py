"""A third geometry, the one the cardiac defaults were never tuned for: a procedural
phantom of isotropic volumes, three organs (liver, kidney, spleen) in a body.

Each patient is ONE volume ``(Z, Y, X)`` of cubic voxels (default 2 mm, 80-100 voxels per
axis, drawn per axis), CT in Hounsfield units (air at -1000) or, with ``modality='MR'``,
non-negative MR-like magnitudes under a smooth per-patient gain. The body is an elliptical
cylinder along z with a fat shell and a spine; the organs are ellipsoids. Between patients
the body sits elsewhere in the field of view (within +-15 mm per axis), turns about z (within
+-12 deg), each organ moves (6 mm std per axis) and changes size (within +-15 % per axis),
and a smooth random deformation (2.5 mm std per axis) bends the whole scene, so that identity
overlays organs poorly, a rigid shift recovers part of the overlap and a deformable
registration the rest.

Everything is a pure function of ``(seed, patient number, config)``; patient ``k`` draws
from its own seed sequence, so it does not depend on how many patients are made.
:func:`write_isotropic_phantom` writes the nnU-Net raw layout (``imagesTr/isoNNN_0000.nii.gz``
as int16, ``labelsTr/``, ``dataset.json``) plus ``split.json``, as the cardiac phantom does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cctr.seg.data.case import Case
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.phantom_common import (
    axis_affine, build_phantom_folder, check_phantom_target, phantom_dataset_json, upsampled_noise,
)
from cctr.seg.data.split import SPLIT_FILENAME, draw_split, save_split

ISOTROPIC_CLASSES = ("background", "liver", "kidney", "spleen")
MODALITIES = ("CT", "MR")
# organ centre (z, y, x) mm from the body centre, semi-axes (z, y, x) mm, CT value (HU), MR value
ORGANS = (
    ((10.0, -5.0, -30.0), (45.0, 35.0, 35.0), 60.0, 420.0),
    ((-30.0, 25.0, 35.0), (25.0, 15.0, 15.0), 160.0, 700.0),
    ((25.0, 10.0, 40.0), (25.0, 20.0, 18.0), 105.0, 560.0),
)
# distance between the knots of the smooth noise fields, mm: the deformation bends organs as a
# whole, the texture varies within an organ, the MR gain spans the body
WARP_KNOTS_MM = 45.0
TEXTURE_KNOTS_MM = 16.0
GAIN_KNOTS_MM = 90.0
# The seed sequence's entropy is (seed, this), so that this phantom and the cardiac (seed alone)
# and abdominal (seed, 2) ones of one seed draw unrelated numbers.
_STREAM = 3


@dataclass(frozen=True)
class IsotropicPhantomConfig:
    """Grid and variability of the isotropic phantom."""

    shape: tuple[int, int] = (80, 100)  # voxels per axis, drawn uniformly per axis and patient
    spacing_mm: float = 2.0  # every axis
    modality: str = "CT"  # 'CT' (HU) or 'MR' (non-negative magnitudes, per-patient gain)
    body_offset_mm: float = 15.0  # body centre within +- this of the volume centre, per axis
    rotation_deg: float = 12.0  # turn about z within +- this
    organ_shift_mm: float = 6.0  # std of each organ's displacement, per axis
    size_jitter: float = 0.15  # each organ's semi-axes scaled within 1 +- this
    warp_mm: float = 2.5  # std of the smooth random deformation, per axis

    def __post_init__(self) -> None:
        if not 16 <= self.shape[0] <= self.shape[1]:
            raise ValueError(f"IsotropicPhantomConfig.shape: need 16 <= low <= high voxels per axis, got {self.shape}")
        if self.spacing_mm <= 0:
            raise ValueError(f"IsotropicPhantomConfig.spacing_mm: must be positive, got {self.spacing_mm}")
        if self.modality not in MODALITIES:
            raise ValueError(f"IsotropicPhantomConfig.modality: one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if not 0 <= self.size_jitter < 1:
            raise ValueError(f"IsotropicPhantomConfig.size_jitter: must be in [0, 1), got {self.size_jitter}")


def case_name(number: int) -> str:
    """Case id = patient id (``iso001``)."""
    return f"iso{number:03d}"


def patient_seeds(seed: int, number: int) -> list[np.random.SeedSequence]:
    """Independent streams of patient ``number``: geometry, appearance (texture, gain, noise)."""
    return np.random.SeedSequence(entropy=(seed, _STREAM), spawn_key=(number,)).spawn(2)


def _smooth(rng: np.random.Generator, shape: tuple[int, int, int], knots_mm: float, spacing_mm: float) -> np.ndarray:
    """Smooth noise of unit std with knots ``knots_mm`` apart."""
    knots = knots_mm / spacing_mm
    return upsampled_noise(rng, shape, [(knots, knots, knots)])


def _body_frame(rng: np.random.Generator, cfg: IsotropicPhantomConfig, shape: tuple[int, int, int]) -> np.ndarray:
    """Each voxel's position in the body frame, mm, ``(Z, Y, X, 3)``: the volume's grid about
    its centre, bent by the smooth deformation, moved by the body's offset, turned about z."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * cfg.spacing_mm for n in shape]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    warp = np.stack([_smooth(rng, shape, WARP_KNOTS_MM, cfg.spacing_mm) for _ in range(3)], axis=-1)
    centre = rng.uniform(-cfg.body_offset_mm, cfg.body_offset_mm, size=3)
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    c, s = np.cos(angle), np.sin(angle)
    turn = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (points + cfg.warp_mm * warp - centre) @ turn


def _organs(rng: np.random.Generator, cfg: IsotropicPhantomConfig, local: np.ndarray) -> np.ndarray:
    """The label map: each organ an ellipsoid, moved and resized per patient; later organs win."""
    label = np.zeros(local.shape[:3], np.uint8)
    for k, (centre, semi, _, _) in enumerate(ORGANS, start=1):
        moved = np.asarray(centre) + rng.normal(0.0, cfg.organ_shift_mm, size=3)
        sized = np.asarray(semi) * rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter, size=3)
        label[(((local - moved) / sized) ** 2).sum(-1) < 1.0] = k
    return label


def _render(rng: np.random.Generator, cfg: IsotropicPhantomConfig, local: np.ndarray, label: np.ndarray,
            half_width: float, half_depth: float) -> np.ndarray:
    """The image: soft tissue in the body, a fat shell, the spine, the organs, then noise (CT)
    or a smooth gain and noise (MR); integral values, float32."""
    ct = cfg.modality == "CT"
    shape = label.shape
    texture = _smooth(rng, shape, TEXTURE_KNOTS_MM, cfg.spacing_mm)
    radius = np.hypot(local[..., 1] / half_depth, local[..., 2] / half_width)
    body = radius < 1.0
    image = np.full(shape, -1000.0 if ct else 0.0, np.float32)
    image[body] = (30.0 + 12.0 * texture[body]) if ct else (220.0 + 30.0 * texture[body])
    image[body & (radius > 0.88)] = -100.0 if ct else 520.0
    spine = np.hypot(local[..., 1] - 0.75 * half_depth, local[..., 2]) < 11.0
    image[spine & body] = 650.0 if ct else 90.0
    for k, (_, _, hu, mr) in enumerate(ORGANS, start=1):
        inside = label == k
        image[inside] = (hu + 5.0 * texture[inside]) if ct else (mr + 20.0 * texture[inside])
    if ct:
        return np.rint(image + rng.normal(0.0, 15.0, size=shape)).astype(np.float32)
    gain = rng.uniform(0.6, 1.6) * np.exp(0.08 * _smooth(rng, shape, GAIN_KNOTS_MM, cfg.spacing_mm))
    return np.rint(np.abs(image * gain + rng.normal(0.0, 12.0, size=shape))).astype(np.float32)


def make_patient(seed: int, number: int, cfg: IsotropicPhantomConfig = IsotropicPhantomConfig()) -> Case:
    """The volume of patient ``number`` (1-based)."""
    geometry_ss, appearance_ss = patient_seeds(seed, number)
    rng = np.random.default_rng(geometry_ss)
    shape = tuple(int(rng.integers(cfg.shape[0], cfg.shape[1] + 1)) for _ in range(3))
    half_depth, half_width = rng.uniform(60.0, 72.0), rng.uniform(74.0, 88.0)
    local = _body_frame(rng, cfg, shape)
    label = _organs(rng, cfg, local)
    image = _render(np.random.default_rng(appearance_ss), cfg, local, label, half_width, half_depth)
    spacing = (cfg.spacing_mm,) * 3
    name = case_name(number)
    return Case(case_id=name, patient_id=name, image=image, label=label, spacing=spacing,
                affine=axis_affine(spacing, (0.0, 0.0, 0.0)), sources=(), class_names=ISOTROPIC_CLASSES)


def _write_patient(root: Path, job: tuple[int, int, IsotropicPhantomConfig]) -> str:
    seed, number, cfg = job
    case = make_patient(seed, number, cfg)
    write_nifti(root / "imagesTr" / f"{case.case_id}_0000.nii.gz", case.image.astype(np.int16), case.affine)
    write_nifti(root / "labelsTr" / f"{case.case_id}.nii.gz", case.label, case.affine)
    return case.case_id


def write_isotropic_phantom(
    out: Path,
    patients: int,
    seed: int = 0,
    cfg: IsotropicPhantomConfig = IsotropicPhantomConfig(),
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
    overwrite: bool = False,
) -> Path:
    """Generate ``patients`` isotropic volumes into ``out`` in the nnU-Net raw layout, with a
    split drawn from ``seed``. As for the other phantoms: the folder appears complete or not
    at all; an existing ``out`` must be empty or a phantom folder (then replaced; anything in it
    no phantom wrote is deleted only with ``overwrite``); ``workers`` processes share the
    patients (default: one per CPU); ``progress`` shows a bar."""
    out = Path(out)
    check_phantom_target(out, patients, seed, overwrite)

    def finish(folder: Path, case_ids: list[str]) -> None:
        (folder / "dataset.json").write_text(phantom_dataset_json(
            "cctr isotropic phantom",
            f"Procedural isotropic {cfg.modality} volumes, three organs in a body, one volume per patient.",
            cfg.modality, ISOTROPIC_CLASSES, case_ids, {cid: cid for cid in case_ids},
            {"kind": "isotropic", "seed": seed, "patients": patients, "config": asdict(cfg)},
        ))
        save_split(draw_split(case_ids, seed), folder / SPLIT_FILENAME)

    jobs = [(seed, n, cfg) for n in range(1, patients + 1)]
    return build_phantom_folder(out, _write_patient, jobs, finish, workers, progress)
