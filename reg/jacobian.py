"""Regularity of a :class:`~reg.field.Field`: its Jacobian determinant and the two numbers
reported for it (share of folded voxels, spread of log volume change).

The determinant is taken of the voxel-to-voxel map on the fixed native grid (central
differences inside, one-sided at the border). In mm it differs only by the constant factor
``prod(moving spacing) / prod(fixed spacing)``, which changes neither its sign nor the
standard deviation of its log, so both reported numbers are spacing-free.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cctr.reg.field import Field


def jacobian_determinant(field: Field) -> np.ndarray:
    """det(d coords / d voxel) at every fixed voxel: float32 (Z, Y, X).

    An axis of size 1 has no derivative; it is taken as the identity along that axis."""
    coords = field.coords.astype(np.float64)
    jac = np.zeros(field.fixed_shape + (3, 3))
    for j in range(3):
        if coords.shape[1 + j] < 2:
            jac[..., j, j] = 1.0
            continue
        for i in range(3):
            jac[..., i, j] = np.gradient(coords[i], axis=j)
    return np.linalg.det(jac).astype(np.float32)


@dataclass(frozen=True)
class Regularity:
    folded_percent: float  # % of fixed voxels with det J <= 0
    log_jac_std: float  # std of log|det J| over fixed voxels with det J > 0


def regularity(field: Field) -> Regularity:
    det = jacobian_determinant(field)
    positive = det > 0
    folded = 100.0 * float((~positive).mean())
    log_std = float(np.log(det[positive]).std()) if positive.any() else float("nan")
    return Regularity(folded_percent=folded, log_jac_std=log_std)
