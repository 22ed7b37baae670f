"""Small synthetic volume pairs with a KNOWN correspondence, for the registration tests.

A scene is a few Gaussian blobs and labelled balls in a physical frame (mm, (z, y, x),
origin at the volume centre). Each volume samples the scene on its own grid (shape,
spacing) after an optional known rigid in-plane motion, so the true map between any two
volumes is known exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

BLOBS = (  # centre (z, y, x) mm, sigma mm, weight; deliberately asymmetric
    ((0.0, -12.0, 8.0), 7.0, 1.0),
    ((6.0, 14.0, 16.0), 6.0, 0.8),
    ((-8.0, 4.0, -18.0), 8.0, 0.6),
    ((0.0, 22.0, -10.0), 4.0, 0.9),
)


@dataclass(frozen=True)
class Motion:
    """x_moving = R (x_fixed) + shift, in-plane rotation about the z axis (radians), mm."""

    angle: float = 0.0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        m = np.eye(4)
        m[1:3, 1:3] = [[c, -s], [s, c]]
        m[:3, 3] = self.shift_mm
        return m


def physical(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """(Z, Y, X, 3) mm of every voxel, origin at the volume centre."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def scene(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32) and label (uint8, classes 0..3: blob k inside radius -> k+1) at points."""
    img = np.full(points_mm.shape[:-1], 0.1, np.float32)
    lab = np.zeros(points_mm.shape[:-1], np.uint8)
    for k, (c, sigma, w) in enumerate(BLOBS):
        d2 = ((points_mm - np.asarray(c)) ** 2).sum(-1)
        img += (w * np.exp(-d2 / (2 * sigma**2))).astype(np.float32)
        if k < 3:
            lab[d2 < (1.2 * sigma) ** 2] = k + 1
    return img, lab


def volume(shape, spacing, motion: Motion = Motion()) -> tuple[np.ndarray, np.ndarray]:
    """The scene seen by a volume that moved by ``motion``: voxel x of it shows scene point
    ``motion^-1 (x)``, so a fixed scene point p appears at ``motion(p)`` in it."""
    pts = physical(shape, spacing)
    inv = np.linalg.inv(motion.matrix())
    return scene(pts @ inv[:3, :3].T + inv[:3, 3])


def true_map(fixed_shape, fixed_spacing, moving_shape, moving_spacing, motion: Motion) -> np.ndarray:
    """4x4 from fixed native voxel to moving native voxel when the moving volume moved by ``motion``."""
    def vox_to_mm(shape, spacing):
        m = np.diag([*spacing, 1.0])
        m[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
        return m

    return np.linalg.inv(vox_to_mm(moving_shape, moving_spacing)) @ motion.matrix() @ vox_to_mm(fixed_shape, fixed_spacing)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each registration test on one torch thread, restoring the setting after: on a
    shared, loaded 2-core machine two spinning threads made these tiny steps ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
