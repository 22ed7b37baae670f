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
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk


def _image(array_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    return img


def _to_canonical_disp(disp_field: sitk.Image, spacing_zyx: Sequence[float]) -> np.ndarray:
    """An ITK displacement field ((x, y, z) mm per voxel) as canonical voxels (3, Z, Y, X) in (z, y, x)."""
    arr = sitk.GetArrayFromImage(disp_field)  # (Z, Y, X, 3), components (x, y, z) mm
    zyx_mm = np.moveaxis(arr[..., ::-1], -1, 0)
    return (zyx_mm / np.asarray(spacing_zyx, dtype=np.float64)[:, None, None, None]).astype(np.float32)


@dataclass(frozen=True)
class DemonsParams:
    iterations: int = 60  # per level
    sigma_mm: float = 1.5  # Gaussian smoothing of the displacement field (best of 1.5 / 2 / 3 on the phantom)
    levels: int = 2  # in-plane pyramid levels (halving y and x); z keeps its few slices
    match_histograms: bool = True  # demons assumes equal intensities for equal tissue


def demons(fixed: np.ndarray, moving: np.ndarray, spacing_zyx: Sequence[float], p: DemonsParams) -> np.ndarray:
    """Diffeomorphic demons, coarse to fine in-plane."""
    f_img, m_img = _image(fixed, spacing_zyx), _image(moving, spacing_zyx)
    if p.match_histograms:
        m_img = sitk.HistogramMatching(m_img, f_img, numberOfHistogramLevels=64, numberOfMatchPoints=16, thresholdAtMeanIntensity=False)
    field = None
    for level in reversed(range(p.levels)):
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
    mesh_mm: float = 20.0  # control point spacing in-plane; along z, one node per 2 slices
    iterations: int = 50  # per level
    levels: int = 2


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
    reg.SetShrinkFactorsPerLevel([2**lv for lv in reversed(range(p.levels))])
    reg.SetSmoothingSigmasPerLevel([float(lv) for lv in reversed(range(p.levels))])
    reg.SetInitialTransform(tx, inPlace=True)
    reg.SetNumberOfThreads(1)
    reg.Execute(f_img, m_img)
    disp = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, f_img.GetSize(), f_img.GetOrigin(), f_img.GetSpacing(), f_img.GetDirection())
    return _to_canonical_disp(disp, spacing_zyx)


@dataclass(frozen=True)
class SynParams:
    seed: int = 0


def require_ants() -> Any:
    """The ``ants`` module, or ImportError saying how to get it."""
    try:
        import ants  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ImportError(
            "backend 'ants-syn' needs the optional package antspyx, which is not installed. It pins "
            "numpy<2.4 and scipy<1.16, so install it in a separate environment: pip install antspyx"
        ) from exc
    return ants


def ants_syn(fixed: np.ndarray, moving: np.ndarray, spacing_zyx: Sequence[float], p: SynParams) -> np.ndarray:
    """ANTs SyN (deformable only: the pair is already pre-aligned), via antspyx."""
    ants = require_ants()
    os.environ["ANTS_RANDOM_SEED"] = str(p.seed)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    sp_xyz = tuple(float(s) for s in reversed(tuple(spacing_zyx)))

    def img(a: np.ndarray):
        return ants.from_numpy(np.ascontiguousarray(np.transpose(a, (2, 1, 0)), dtype=np.float32), spacing=sp_xyz)

    f_img = img(fixed)
    out = ants.registration(fixed=f_img, moving=img(moving), type_of_transform="SyNOnly", random_seed=p.seed)
    # warping each physical coordinate image with the forward transforms gives, at every
    # fixed voxel, the physical point it maps to in the moving image
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in fixed.shape], indexing="ij"))
    mapped = []
    for axis in range(3):
        coord_mm = grid[axis] * float(spacing_zyx[axis])
        warped = ants.apply_transforms(fixed=f_img, moving=img(coord_mm), transformlist=out["fwdtransforms"], interpolator="linear")
        mapped.append(np.transpose(warped.numpy(), (2, 1, 0)) / float(spacing_zyx[axis]))
    return (np.stack(mapped) - grid).astype(np.float32)
