"""Classical deformable registration of two canonical-grid images: SimpleITK demons and
B-spline, and ANTs SyN through the optional ``antspyx`` package.

Each function takes the fixed and the (pre-aligned) moving canonical images (Zc, Yc, Xc) in
[0, 1] plus the grid spacing (z, y, x) mm and returns the canonical displacement
(3, Zc, Yc, Xc) in canonical voxels, channel order (z, y, x), with the convention of
:mod:`reg.field`: ``warped(c) = moving(c + disp(c))``. All are deterministic: demons has no
sampling; the B-spline metric samples every voxel on one thread; ANTs is run with a fixed
random seed and one ITK thread.

ANTs is not a dependency: antspyx pins numpy and scipy below what this project tests with,
so install it in a separate environment (``pip install antspyx``, or ``pip install
'cctr[ants]'``, in a venv without the project's constraints) to use ``ants-syn``.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from cctr.reg.options import option


def _image(array_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    return img


def _to_canonical_disp(disp_field: sitk.Image, spacing_zyx: Sequence[float]) -> np.ndarray:
    """An ITK displacement field ((x, y, z) mm per voxel) as canonical voxels (3, Z, Y, X) in (z, y, x)."""
    arr = sitk.GetArrayFromImage(disp_field)  # (Z, Y, X, 3), components (x, y, z) mm
    zyx_mm = np.moveaxis(arr[..., ::-1], -1, 0)
    return (zyx_mm / np.asarray(spacing_zyx, dtype=np.float64)[:, None, None, None]).astype(np.float32)


# in-plane pyramid levels (halving y and x; z keeps its few slices) of both SimpleITK methods
LEVELS = 2


@dataclass(frozen=True)
class DemonsParams:
    iterations: int = option(60, "sitk-demons: iterations per pyramid level")
    sigma_mm: float = option(1.5, "sitk-demons: Gaussian smoothing of the displacement field, mm")

    def __post_init__(self) -> None:
        # refused when the spec is read, before any pre-alignment or registration runs
        if self.iterations < 1:
            raise ValueError(f"sitk-demons: iterations must be >= 1, got {self.iterations}")
        if not self.sigma_mm > 0:
            raise ValueError(f"sitk-demons: sigma_mm must be > 0, got {self.sigma_mm}")


def demons(fixed: np.ndarray, moving: np.ndarray, spacing_zyx: Sequence[float], p: DemonsParams) -> np.ndarray:
    """Diffeomorphic demons, coarse to fine in-plane, after histogram matching (demons assumes
    equal intensities for equal tissue)."""
    f_img, m_img = _image(fixed, spacing_zyx), _image(moving, spacing_zyx)
    m_img = sitk.HistogramMatching(m_img, f_img, numberOfHistogramLevels=64, numberOfMatchPoints=16, thresholdAtMeanIntensity=False)
    field = None
    for level in reversed(range(LEVELS)):
        shrink = [2**level, 2**level, 1]
        f_l = sitk.Shrink(f_img, shrink) if level else f_img
        m_l = sitk.Shrink(m_img, shrink) if level else m_img
        flt = sitk.DiffeomorphicDemonsRegistrationFilter()
        flt.SetNumberOfIterations(p.iterations)
        flt.SetStandardDeviations(p.sigma_mm)
        flt.SetUseImageSpacing(True)
        flt.SetSmoothDisplacementField(True)
        if field is None:
            field = flt.Execute(f_l, m_l)
        else:
            init = sitk.Resample(field, f_l, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
            field = flt.Execute(f_l, m_l, init)
    return _to_canonical_disp(field, spacing_zyx)


@dataclass(frozen=True)
class BSplineParams:
    mesh_mm: float = option(20.0, "sitk-bspline: control point spacing in-plane, mm (along z: one per 2 slices)")
    iterations: int = option(50, "sitk-bspline: optimiser iterations per pyramid level")

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"sitk-bspline: iterations must be >= 1, got {self.iterations}")
        if not self.mesh_mm > 0:
            raise ValueError(f"sitk-bspline: mesh_mm must be > 0, got {self.mesh_mm}")


def bspline(fixed: np.ndarray, moving: np.ndarray, spacing_zyx: Sequence[float], p: BSplineParams) -> np.ndarray:
    """Free-form B-spline deformation, correlation metric, L-BFGS-B, every voxel sampled."""
    f_img, m_img = _image(fixed, spacing_zyx), _image(moving, spacing_zyx)
    extent = [n * s for n, s in zip(f_img.GetSize(), f_img.GetSpacing())]
    node_mm = [p.mesh_mm, p.mesh_mm, 2.0 * f_img.GetSpacing()[2]]
    mesh = [max(1, int(round(e / m))) for e, m in zip(extent, node_mm)]
    tx = sitk.BSplineTransformInitializer(f_img, mesh)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=p.iterations)
    reg.SetShrinkFactorsPerLevel([2**lv for lv in reversed(range(LEVELS))])
    reg.SetSmoothingSigmasPerLevel([float(lv) for lv in reversed(range(LEVELS))])
    reg.SetInitialTransform(tx, inPlace=True)
    reg.SetNumberOfThreads(1)
    reg.Execute(f_img, m_img)
    disp = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, f_img.GetSize(), f_img.GetOrigin(), f_img.GetSpacing(), f_img.GetDirection())
    return _to_canonical_disp(disp, spacing_zyx)


SYN_SEED = 0  # ANTS_RANDOM_SEED of every run: the same pair, the same Field
SYN_PAD = 4   # voxels of edge-replicated margin on every side while registering (see ants_syn)


ANTS_EXTRA = "pip install 'cctr[ants]'"


def require_ants() -> Any:
    """The ``ants`` module, or ImportError saying how to get it."""
    try:
        import ants  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "backend 'ants-syn' needs the optional extra 'ants' (package antspyx), which is not installed. "
            "antspyx pins numpy<2.4 and scipy<1.16, so install it in a separate environment without the "
            f"project's constraints: {ANTS_EXTRA} (pip install -e '.[ants]' from a checkout), or pip install antspyx"
        ) from exc
    return ants


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, restoring the old values after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def ants_syn(fixed: np.ndarray, moving: np.ndarray, spacing_zyx: Sequence[float], p: None = None) -> np.ndarray:
    """ANTs SyN (deformable only: the pair is already pre-aligned), via antspyx.

    SyN holds its displacement at zero on the outermost voxels of the image it registers, so
    both images get ``SYN_PAD`` voxels of edge-replicated margin first (no artificial edge) and
    the displacement is cropped back; without it a shift fades out towards the border, which
    on a grid of few slices is a large part of the volume. The transforms ANTs writes are composed into
    one displacement field on the fixed grid, read back and deleted.

    The seed reaches antsRegistration through ANTS_RANDOM_SEED (antspyx 0.6 ignores a
    ``random_seed`` argument) and ITK runs on one thread; ITK reads its thread count once per
    process, so this holds when the first ANTs call of the process is made here."""
    ants = require_ants()
    shape = np.shape(fixed)
    if np.shape(moving) != shape or len(shape) != 3:
        raise ValueError(f"ants-syn: fixed {shape} and moving {np.shape(moving)} must be 3D images of one shape")
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    sp_xyz = tuple(float(s) for s in spacing[::-1])

    def img(a: np.ndarray):
        padded = np.pad(np.asarray(a, dtype=np.float32), SYN_PAD, mode="edge")
        return ants.from_numpy(np.ascontiguousarray(np.transpose(padded, (2, 1, 0))), spacing=sp_xyz)

    f_img, m_img = img(fixed), img(moving)
    with tempfile.TemporaryDirectory(prefix="cctr-ants-") as tmp, \
            _environment(ANTS_RANDOM_SEED=str(SYN_SEED), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1"):
        out = ants.registration(fixed=f_img, moving=m_img, type_of_transform="SyNOnly",
                                outprefix=os.path.join(tmp, "syn_"))
        composed = ants.apply_transforms(fixed=f_img, moving=m_img, transformlist=out["fwdtransforms"],
                                         compose=os.path.join(tmp, "fwd_"))
        if not composed:
            raise RuntimeError("ants-syn: antsApplyTransforms did not write the composed displacement field")
        field = ants.image_read(composed).numpy()  # (X, Y, Z, 3): physical (x, y, z) mm at each fixed voxel
    disp_zyx = np.transpose(field[..., ::-1], (3, 2, 1, 0)) / spacing[:, None, None, None]
    crop = tuple(slice(SYN_PAD, SYN_PAD + n) for n in shape)
    return np.ascontiguousarray(disp_zyx[(slice(None), *crop)], dtype=np.float32)
