"""Pre-alignment: where to place each volume's canonical grid so that a deformable backend only
has to learn the residual deformation.

Every volume's grid is first centred on the volume's own centre. With method ``'search'``
the moving grid of a pair is then turned in-plane and shifted so that its bright structures
(in cine MRI: the blood pools) best overlap the fixed one's: every angle in a range is
tried on slice-averaged canonical images and, for each, the best shift is read off one FFT
cross-correlation. This handles the large in-plane rotations between patients (tens of
degrees) that a deformable net cannot learn well; it costs a few milliseconds per pair.

With method ``'moments'`` (isotropic volumes: CT or 3D MR, where the grid is not a stack of
slices and a rotation search in one plane means nothing) the moving grid is shifted in 3D so
that the intensity centres of mass of the two canonical images coincide: it takes out where
the body lies in the field of view, which varies by centimetres between scans, in well under
a millisecond per pair.

Both return a 4x4 map from fixed canonical voxel to moving canonical voxel, to be composed
with the moving volume's canonical-to-native map (:mod:`reg.placement`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from cctr.reg.options import option

METHODS = ("none", "search", "moments")


@dataclass(frozen=True)
class PrealignConfig:
    method: str = option("search", "'none' (centred grids), 'search' (rigid in-plane search: stacks) or 'moments' "
                                   "(3D centre-of-mass shift: isotropic volumes); planned")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown pre-alignment {self.method!r}; expected one of {METHODS}")


# The search's own constants: no dataset the plan has met needed others, so they are not options.
BRIGHT_PERCENTILE = 90.0  # canonical voxels above this percentile are the "bright structures"
MAX_ANGLE_DEG = 60.0      # rotations tried: +-MAX_ANGLE_DEG in steps of ANGLE_STEP_DEG
ANGLE_STEP_DEG = 5.0
MAX_SHIFT_MM = 40.0       # 'search' and 'moments': no larger shift is taken
DOWNSAMPLE = 2            # search on in-plane images pooled by this factor (cost / factor^2)


def _rotate_about_center(image_yx: np.ndarray, angle: float) -> np.ndarray:
    """``out(p) = image(R(p - q0) + q0)``, R turning +y towards +x by ``angle``."""
    q0 = (np.asarray(image_yx.shape, dtype=np.float64) - 1.0) / 2.0
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    return ndimage.affine_transform(image_yx, rot, offset=q0 - rot @ q0, order=1, mode="constant", cval=0.0)


def _taper(shape_yx: Sequence[int]) -> np.ndarray:
    """A smooth disc window on the FIXED image, so the match is decided by the middle of its
    field of view (the moving image slides under it unwindowed, so no shift is favoured)."""
    yy, xx = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape_yx], indexing="ij")
    return np.clip(1.5 - 1.5 * np.hypot(yy, xx), 0.0, 1.0)


def _bright_projection(image: np.ndarray, percentile: float, factor: int) -> np.ndarray:
    """Share of bright voxels along z, pooled in-plane by ``factor``: (Yc / f, Xc / f)."""
    share = (image > np.percentile(image, percentile)).mean(axis=0)
    ny, nx = share.shape[0] // factor, share.shape[1] // factor
    return share[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor).mean(axis=(1, 3))


def search_rigid(
    fixed_canonical: np.ndarray,
    moving_canonical: np.ndarray,
    inplane_spacing_mm: float,
    config: PrealignConfig,
) -> np.ndarray:
    """Best in-plane rotation + shift taking fixed canonical voxels to moving canonical voxels.

    Both inputs are canonical-grid images (Zc, Yc, Xc) in [0, 1]. Returns a 4x4 map on
    (z, y, x, 1); the identity when the method is not ``'search'``."""
    if config.method != "search":
        return np.eye(4)
    factor = DOWNSAMPLE
    fixed2d = _bright_projection(fixed_canonical, BRIGHT_PERCENTILE, factor)
    moving2d = _bright_projection(moving_canonical, BRIGHT_PERCENTILE, factor)
    weight = _taper(fixed2d.shape)
    total = weight.sum()
    template = weight * (fixed2d - (weight * fixed2d).sum() / total)
    template_var = float((template * (fixed2d - (weight * fixed2d).sum() / total)).sum())
    shape = fixed2d.shape
    pad = tuple(2 * n for n in shape)

    def correlate(kernel_hat: np.ndarray, image: np.ndarray) -> np.ndarray:
        """sum_p kernel(p) image(p - s) for every shift s (wrapped on the padded grid)."""
        return np.fft.irfft2(kernel_hat * np.conj(np.fft.rfft2(image, s=pad)), s=pad)

    template_hat, weight_hat = np.fft.rfft2(template, s=pad), np.fft.rfft2(weight, s=pad)
    max_shift = MAX_SHIFT_MM / (inplane_spacing_mm * factor)
    offsets = [np.fft.fftfreq(n, 1.0 / n) for n in pad]  # signed shift of each FFT bin
    allowed = np.hypot(*np.meshgrid(*offsets, indexing="ij")) <= max_shift
    n_steps = int(np.floor(MAX_ANGLE_DEG / ANGLE_STEP_DEG))
    angles = np.deg2rad(ANGLE_STEP_DEG * np.arange(-n_steps, n_steps + 1))
    best = (-np.inf, 0.0, 0.0, 0.0)
    for angle in angles:
        rotated = _rotate_about_center(moving2d, angle)
        # weighted normalised cross-correlation of the fixed window with the moving image
        # under it, at every shift: covariance / sqrt(variance of each)
        cov = correlate(template_hat, rotated)
        s1, s2 = correlate(weight_hat, rotated), correlate(weight_hat, rotated * rotated)
        moving_var = np.clip(s2 - s1 * s1 / total, 0.0, None)
        ncc = np.where(allowed, cov / np.sqrt(moving_var * template_var + 1e-12), -np.inf)
        iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        if ncc[iy, ix] > best[0]:
            best = (float(ncc[iy, ix]), float(angle), float(offsets[0][iy]), float(offsets[1][ix]))
    _, angle, sy, sx = best
    sy, sx = sy * factor, sx * factor
    # fixed p matches rotated-moving at p - s, i.e. moving canonical R (p - s - q0) + q0;
    # rotating the pooled image about its centre is rotating the full one about its centre
    q0 = (np.asarray(fixed_canonical.shape[1:], dtype=np.float64) - 1.0) / 2.0
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    m = np.eye(4)
    m[1:3, 1:3] = rot
    m[1:3, 3] = rot @ (-np.array([sy, sx]) - q0) + q0
    return m


def center_of_mass(image_zyx: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre (z, y, x) in voxels of a non-negative image; its geometric
    centre when the image is all zero."""
    img = np.clip(np.asarray(image_zyx, dtype=np.float64), 0.0, None)
    total = img.sum()
    if not total > 0:
        return (np.asarray(img.shape, dtype=np.float64) - 1.0) / 2.0
    return np.array([(img.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / total
                     for axis, n in enumerate(img.shape)])


def align_moments(
    fixed_canonical: np.ndarray,
    moving_canonical: np.ndarray,
    spacing_zyx: Sequence[float],
    config: PrealignConfig,
) -> np.ndarray:
    """3D shift taking fixed canonical voxels to moving canonical voxels so that the intensity
    centres of mass meet; shifts longer than ``MAX_SHIFT_MM`` are shortened to it (a scan cut
    off at one side moves its centre of mass by more than the anatomy moved). Inputs are
    canonical images (Zc, Yc, Xc) in [0, 1]; returns a 4x4 map on (z, y, x, 1), the identity
    when the method is not ``'moments'``."""
    if config.method != "moments":
        return np.eye(4)
    shift_vox = center_of_mass(moving_canonical) - center_of_mass(fixed_canonical)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    length_mm = float(np.linalg.norm(shift_vox * spacing))
    if length_mm > MAX_SHIFT_MM:
        shift_vox *= MAX_SHIFT_MM / length_mm
    m = np.eye(4)
    m[:3, 3] = shift_vox
    return m
