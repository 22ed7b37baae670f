"""Test doubles shared by the test modules: a registration backend whose answer is known."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cctr.reg.field import CanonicalField, Field
from cctr.reg.spec import BackendSpec


class ShiftBackend:
    """Fake backend: the moving point of fixed voxel p is p + shift (voxels, (z, y, x));
    records the size of every ``register_many`` call in ``calls``. Its spec says it runs in
    process and is not learned, as the identity backend's does (worker processes would rebuild
    a backend from its spec, which a fake cannot be)."""

    spec = BackendSpec("fake-shift", "identity")

    def __init__(self, shift_zyx: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        self.shift = np.asarray(shift_zyx, np.float32).reshape(3, 1, 1, 1)
        self.calls: list[int] = []

    def register(self, fixed, fixed_spacing, moving, moving_spacing) -> CanonicalField:
        return self.register_many([(fixed, fixed_spacing, moving, moving_spacing)])[0]

    def register_many(self, pairs) -> list[CanonicalField]:
        self.calls.append(len(pairs))
        return [CanonicalField.of_dense(Field(Field.identity(f.shape).coords + self.shift, tuple(m.shape)))
                for f, _, m, _ in pairs]
