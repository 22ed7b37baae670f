"""The one transform convention of the project: a :class:`Field`.

A registration of a MOVING volume to a FIXED volume is stored as a dense map

    ``coords[:, z, y, x] = (z', y', x')``

from every voxel ``(z, y, x)`` of the fixed volume's NATIVE grid to the point of the
moving volume's NATIVE voxel grid that corresponds to it. Voxel coordinates are array
indices, in array-axis order ``(z, y, x)``; voxel centres sit on integers. So the moving
volume warped into the fixed volume is ``warped[z, y, x] = moving(coords[:, z, y, x])``,
whichever grid the backend computed on, and the label of a labeled moving volume "pulled"
into an unlabeled fixed one is ``warp_labels``.

Backends work on a canonical grid (:mod:`reg.grid`); :meth:`Field.from_canonical` brings
their result back to native grids. VoxelMorph's spatial transformer computes
``warped(c) = moving(c + disp(c))`` where ``c`` and ``disp`` are canonical voxel indices in
tensor-axis order ``(D, H, W) = (z, y, x)`` (its meshgrid is ``ij``-indexed and it flips the
channel order only when calling ``grid_sample``), so a canonical displacement ``disp``
(3, Zc, Yc, Xc) gives, for a fixed native voxel ``p``::

    c = fixed_to_native^-1 p,   coords(p) = moving_to_native (c + disp(c))

with both ``*_to_native`` 4x4 homogeneous maps from canonical voxel to native voxel.

A backend's answer is kept as a :class:`CanonicalField`: the canonical displacement (float16)
plus the two placements, a few hundred kB whatever the native grids, from which the native
map is evaluated lazily, for one slab of fixed slices (:meth:`CanonicalField.slab`, a dense
:class:`Field` of those slices) or for given points (:meth:`CanonicalField.map_points`).
:meth:`CanonicalField.dense` is the whole :class:`Field`, equal to the slabs stacked.

Sampling policy: a moving volume occupies ``[-0.5, n - 0.5]`` along each axis of size ``n``
(each voxel is a box around its centre, which matters for stacks of few thick slices).
Inside it, values are interpolated linearly with edge values held; outside it, images read
0 and one-hot labels read all-zero (so :meth:`warp_labels` gives background there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


def voxel_grid(shape_zyx: Sequence[int]) -> np.ndarray:
    """Voxel index of every voxel of a grid.

    Parameters
    ----------
    shape_zyx : sequence of int
        The grid's shape ``(Z, Y, X)``.

    Returns
    -------
    numpy.ndarray
        float32 ``(3, Z, Y, X)``, channel order ``(z, y, x)``: ``out[:, z, y, x] = (z, y, x)``.
    """
    axes = [np.arange(n, dtype=np.float32) for n in shape_zyx]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous map to points.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``(4, 4)`` homogeneous map acting on ``(z, y, x, 1)``.
    points : numpy.ndarray
        ``(..., 3)`` points in ``(z, y, x)`` order, in the map's input coordinates.

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` mapped points in ``(z, y, x)`` order (float64 for float32 or float64 input).
    """
    m = np.asarray(matrix, dtype=np.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def affine_grid(matrix: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """A 4x4 homogeneous map applied to every voxel index of a grid.

    Built by broadcasting one axis at a time, so no ``(Z, Y, X, 3)`` intermediate exists.

    Parameters
    ----------
    matrix : numpy.ndarray
        ``(4, 4)`` homogeneous map from the grid's voxel index ``(z, y, x, 1)`` to the output
        coordinates.
    shape_zyx : sequence of int
        The grid's shape ``(Z, Y, X)``.

    Returns
    -------
    numpy.ndarray
        float32 ``(3, Z, Y, X)``, channel order ``(z, y, x)``: ``out[:, z, y, x]`` is ``matrix``
        applied to ``(z, y, x)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    axes = [np.arange(n, dtype=np.float64) for n in shape_zyx]
    out = np.empty((3, *shape_zyx), dtype=np.float32)
    for i in range(3):
        out[i] = (m[i, 0] * axes[0][:, None, None] + m[i, 1] * axes[1][None, :, None]
                  + m[i, 2] * axes[2][None, None, :] + m[i, 3])
    return out


def _linear_weights(positions: np.ndarray, size: int) -> np.ndarray:
    """(len(positions), size) matrix of 1D linear interpolation, edge values held."""
    q = np.clip(positions, 0.0, size - 1.0)
    lo = np.floor(q).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = q - lo
    w = np.zeros((len(q), size), dtype=np.float64)
    rows = np.arange(len(q))
    np.add.at(w, (rows, lo), 1.0 - frac)
    np.add.at(w, (rows, hi), frac)
    return w


def _sample(volume_zyx: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """``volume`` at ``coords`` (3, ...) with edge values held beyond the last voxel centre."""
    return ndimage.map_coordinates(volume_zyx, coords, order=order, mode="nearest", prefilter=False)


def _points(points_zyx: np.ndarray) -> np.ndarray:
    """``points_zyx`` as float64 ``(N, 3)``; ValueError for any other shape."""
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be an array (N, 3) in (z, y, x), got shape {pts.shape}")
    return pts


def points_inside(points_zyx: np.ndarray, shape_zyx: Sequence[int]) -> np.ndarray:
    """Which points lie within a volume, i.e. in ``[-0.5, n - 0.5]`` on every axis of size ``n``
    (the sampling policy of the module docstring).

    Parameters
    ----------
    points_zyx : numpy.ndarray
        ``(N, 3)`` voxel coordinates ``(z, y, x)`` of the volume's grid, any real values.
    shape_zyx : sequence of int
        The volume's shape ``(Z, Y, X)``.

    Returns
    -------
    numpy.ndarray
        bool ``(N,)``: True where the point is inside on every axis.
    """
    n = np.asarray(shape_zyx, dtype=np.float64)
    return ((np.asarray(points_zyx) >= -0.5) & (np.asarray(points_zyx) <= n - 0.5)).all(axis=1)


def _reach(coords: np.ndarray, shape_zyx: Sequence[int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box of a volume of ``shape`` that linear sampling at ``coords`` (3, ...) can read,
    and ``coords`` relative to it: sampling the box gives what sampling the volume gives (a
    margin of one voxel, edges held at the volume's own edges), at the cost of the box. A
    slab of a few fixed slices reads a few moving slices, not the whole moving volume."""
    flat = coords.reshape(3, -1)
    lo = np.clip(np.floor(flat.min(axis=1)).astype(int) - 1, 0, np.asarray(shape_zyx) - 1)
    hi = np.clip(np.ceil(flat.max(axis=1)).astype(int) + 2, lo + 1, np.asarray(shape_zyx))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return box, coords - lo.reshape(3, *([1] * (coords.ndim - 1))).astype(coords.dtype)


@dataclass(frozen=True)
class Field:
    """Dense map from every voxel of the FIXED volume's native grid to a point in the MOVING
    volume's native voxel coordinates (z, y, x), whatever grid the backend worked on.

    Parameters
    ----------
    coords : numpy.ndarray
        ``(3, Z, Y, X)`` on the fixed native grid, channel order ``(z, y, x)``: the moving native
        voxel point of every fixed native voxel. Stored as float32.
    moving_shape : tuple of int
        The moving volume's native shape ``(Z', Y', X')``.

    Raises
    ------
    ValueError
        When ``coords`` is not an array ``(3, Z, Y, X)`` or ``moving_shape`` is not three
        positive sizes.
    """

    coords: np.ndarray  # float32 (3, Z, Y, X) on the fixed native grid
    moving_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        c = self.coords
        if not isinstance(c, np.ndarray) or c.ndim != 4 or c.shape[0] != 3:
            raise ValueError(f"Field.coords must be an array (3, Z, Y, X), got shape {getattr(c, 'shape', None)}")
        if c.dtype != np.float32:
            object.__setattr__(self, "coords", c.astype(np.float32))
        if len(self.moving_shape) != 3 or min(self.moving_shape) < 1:
            raise ValueError(f"Field.moving_shape must be three positive sizes, got {self.moving_shape}")
        object.__setattr__(self, "moving_shape", tuple(int(n) for n in self.moving_shape))

    @property
    def fixed_shape(self) -> tuple[int, int, int]:
        """The fixed native grid's shape ``(Z, Y, X)``."""
        return tuple(self.coords.shape[1:])  # type: ignore[return-value]

    @property
    def displacement(self) -> np.ndarray:
        """``coords`` minus the fixed voxel index.

        Returns
        -------
        numpy.ndarray
            float32 ``(3, Z, Y, X)`` on the fixed native grid, channel order ``(z, y, x)``, in
            voxels; meaningful as a displacement only when fixed and moving share a grid.
        """
        return self.coords - voxel_grid(self.fixed_shape)

    def inside(self) -> np.ndarray:
        """The fixed voxels whose corresponding point lies inside the moving volume.

        Returns
        -------
        numpy.ndarray
            bool ``(Z, Y, X)`` on the fixed native grid: True where ``coords`` lies in
            ``[-0.5, n - 0.5]`` on every axis of the moving volume.
        """
        ok = np.ones(self.fixed_shape, dtype=bool)
        for axis, n in enumerate(self.moving_shape):
            ok &= (self.coords[axis] >= -0.5) & (self.coords[axis] <= n - 0.5)
        return ok

    def _check_moving(self, shape: Sequence[int], what: str) -> None:
        if tuple(shape) != self.moving_shape:
            raise ValueError(f"{what} has shape {tuple(shape)}, but this field maps into a moving volume of shape {self.moving_shape}")

    def warp_image(self, moving_zyx: np.ndarray) -> np.ndarray:
        """The moving image resampled on the fixed grid.

        Parameters
        ----------
        moving_zyx : numpy.ndarray
            ``(Z', Y', X')`` = ``moving_shape``, on the moving native grid, any real dtype.

        Returns
        -------
        numpy.ndarray
            float32 ``(Z, Y, X)`` on the fixed native grid: ``warped[z, y, x] =
            moving(coords[:, z, y, x])``, linear with edge values held inside the moving
            volume, 0 outside it.

        Raises
        ------
        ValueError
            When ``moving_zyx`` does not have shape ``moving_shape``.
        """
        self._check_moving(np.shape(moving_zyx), "moving image")
        box, coords = _reach(self.coords, self.moving_shape)
        out = _sample(np.asarray(moving_zyx)[box].astype(np.float32), coords, order=1)
        out[~self.inside()] = 0.0
        return out.astype(np.float32, copy=False)

    def warp_onehot(self, moving_label_zyx: np.ndarray, num_classes: int) -> np.ndarray:
        """Soft warped labels: each class's indicator interpolated linearly.

        Parameters
        ----------
        moving_label_zyx : numpy.ndarray
            Integer ``(Z', Y', X')`` = ``moving_shape`` class indices ``0 .. C - 1``, on the
            moving native grid.
        num_classes : int
            ``C``, background included.

        Returns
        -------
        numpy.ndarray
            float32 ``(C, Z, Y, X)`` on the fixed native grid; sums to 1 over C inside the
            moving volume and to 0 outside it.

        Raises
        ------
        ValueError
            When ``moving_label_zyx`` does not have shape ``moving_shape``, or holds values
            outside ``0 .. C - 1`` where this field reads it.
        """
        self._check_moving(np.shape(moving_label_zyx), "moving label map")
        box, coords = _reach(self.coords, self.moving_shape)
        lab = np.asarray(moving_label_zyx)[box]
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"moving label map has values outside 0..{num_classes - 1}")
        inside = self.inside()
        out = np.empty((num_classes, *self.fixed_shape), dtype=np.float32)
        for c in range(num_classes):
            out[c] = _sample((lab == c).astype(np.float32), coords, order=1)
        out[:, ~inside] = 0.0
        return out

    def warp_labels(self, moving_label_zyx: np.ndarray, num_classes: int) -> np.ndarray:
        """Hard warped labels: one-hot linear interpolation (:meth:`warp_onehot`), then argmax.

        Parameters
        ----------
        moving_label_zyx : numpy.ndarray
            Integer ``(Z', Y', X')`` = ``moving_shape`` class indices ``0 .. C - 1``, on the
            moving native grid.
        num_classes : int
            ``C``, background included.

        Returns
        -------
        numpy.ndarray
            uint8 ``(Z, Y, X)`` on the fixed native grid; background (0) outside the moving
            volume.

        Raises
        ------
        ValueError
            As :meth:`warp_onehot`.
        """
        return self.warp_onehot(moving_label_zyx, num_classes).argmax(axis=0).astype(np.uint8)

    def map_points(self, points_zyx: np.ndarray) -> np.ndarray:
        """Map fixed native voxel points to moving native voxel points.

        The map is interpolated linearly; beyond the fixed grid its displacement is held at
        the value of the nearest border voxel.

        Parameters
        ----------
        points_zyx : numpy.ndarray
            ``(N, 3)`` fixed native voxel coordinates ``(z, y, x)``, any real values.

        Returns
        -------
        numpy.ndarray
            float32 ``(N, 3)`` moving native voxel coordinates ``(z, y, x)``.

        Raises
        ------
        ValueError
            When ``points_zyx`` is not ``(N, 3)``.
        """
        pts = _points(points_zyx)
        disp = self.displacement
        where = pts.T
        moved = np.stack([_sample(disp[a], where, order=1) for a in range(3)], axis=1)
        return (pts + moved).astype(np.float32)

    def check(self, where: str) -> "Field":
        """``self`` when it is plausible (see :func:`validate_field`).

        Parameters
        ----------
        where : str
            What the field is, named in the error.

        Returns
        -------
        Field
            ``self``.

        Raises
        ------
        ValueError
            Naming ``where``, when :func:`validate_field` rejects the field.
        """
        validate_field(self, where)
        return self

    @staticmethod
    def identity(shape_zyx: Sequence[int]) -> "Field":
        """The identity map of a grid onto itself.

        Parameters
        ----------
        shape_zyx : sequence of int
            ``(Z, Y, X)``, both the fixed and the moving native shape.

        Returns
        -------
        Field
            ``coords`` = :func:`voxel_grid` of the shape.
        """
        shape = tuple(int(n) for n in shape_zyx)
        return Field(voxel_grid(shape), shape)  # type: ignore[arg-type]

    @staticmethod
    def from_affine(matrix: np.ndarray, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> "Field":
        """The field of an affine map.

        Parameters
        ----------
        matrix : numpy.ndarray
            ``(4, 4)`` homogeneous map from fixed native voxel ``(z, y, x, 1)`` to moving native
            voxel.
        fixed_shape : sequence of int
            The fixed native shape ``(Z, Y, X)``.
        moving_shape : sequence of int
            The moving native shape ``(Z', Y', X')``.

        Returns
        -------
        Field
            ``coords`` float32 ``(3, Z, Y, X)``: ``matrix`` applied to every fixed voxel.
        """
        return Field(affine_grid(matrix, fixed_shape), tuple(moving_shape))  # type: ignore[arg-type]

    @staticmethod
    def from_canonical(
        disp_canonical: np.ndarray,
        fixed_to_native: np.ndarray,
        fixed_shape: Sequence[int],
        moving_to_native: np.ndarray,
        moving_shape: Sequence[int],
    ) -> "Field":
        """Bring a canonical-grid displacement back to native grids (see the module docstring).

        Fixed voxels outside the canonical crop get the displacement of the nearest canonical
        border voxel.

        Parameters
        ----------
        disp_canonical : numpy.ndarray
            float ``(3, Zc, Yc, Xc)``, channel order ``(z, y, x)``, in canonical voxels, defined on
            the FIXED canonical grid and pointing into the MOVING canonical grid:
            ``warped(c) = moving(c + disp(c))``.
        fixed_to_native : numpy.ndarray
            ``(4, 4)`` homogeneous map from fixed canonical voxel to fixed native voxel.
        fixed_shape : sequence of int
            The fixed native shape ``(Z, Y, X)``.
        moving_to_native : numpy.ndarray
            ``(4, 4)`` homogeneous map from moving canonical voxel to moving native voxel.
        moving_shape : sequence of int
            The moving native shape ``(Z', Y', X')``.

        Returns
        -------
        Field
            ``coords`` float32 ``(3, Z, Y, X)`` on the fixed native grid, in moving native voxels.

        Raises
        ------
        ValueError
            When ``disp_canonical`` is not ``(3, Zc, Yc, Xc)`` or ``moving_shape`` is not three
            positive sizes.
        """
        disp = _check_disp(disp_canonical)
        fixed_shape = tuple(int(n) for n in fixed_shape)
        coords = _native_coords(disp, np.linalg.inv(np.asarray(fixed_to_native, dtype=np.float64)),
                                np.asarray(moving_to_native, dtype=np.float64), fixed_shape, 0, fixed_shape[0])
        return Field(coords, tuple(moving_shape))  # type: ignore[arg-type]


def _check_disp(disp_canonical: np.ndarray) -> np.ndarray:
    disp = np.asarray(disp_canonical)
    if disp.ndim != 4 or disp.shape[0] != 3 or min(disp.shape) < 1:
        raise ValueError(f"canonical displacement must be (3, Zc, Yc, Xc), got shape {disp.shape}")
    return disp


def _native_coords(disp: np.ndarray, to_canon: np.ndarray, moving_to_native: np.ndarray,
                   fixed_shape: tuple[int, ...], start: int, stop: int) -> np.ndarray:
    """float32 (3, stop - start, Y, X): the moving native point of every fixed native voxel
    of slices ``start .. stop - 1`` (the module docstring's formula)."""
    shape = (stop - start, *fixed_shape[1:])
    at_start = np.eye(4)
    at_start[0, 3] = start
    slab_to_canon = to_canon @ at_start
    canon = affine_grid(slab_to_canon, shape)  # fixed canonical voxel of every fixed native voxel
    linear = slab_to_canon[:3, :3]
    d = disp.astype(np.float64)
    if np.allclose(linear, np.diag(np.diag(linear))):
        # axis-aligned placement: interpolate separably, one small matrix per axis
        w = [_linear_weights(_axis_positions(slab_to_canon, a, n), d.shape[1 + a]) for a, n in enumerate(shape)]
        moved = np.einsum("az,by,cx,kzyx->kabc", w[0], w[1], w[2], d, optimize=True)
    else:
        moved = np.stack([_sample(d[a], canon, order=1) for a in range(3)])
    m = moving_to_native
    coords = np.einsum("ij,jzyx->izyx", m[:3, :3], canon + moved) + m[:3, 3, None, None, None]
    return coords.astype(np.float32)


# Above this many fixed voxels, CanonicalField.check reads CHECK_SLICES evenly spaced slices
# instead of all: a backend's failure (divergence, noise, a damaged file) spreads over the
# volume, and a full check of a 512 x 512 x 200 CT pair would cost more than its use.
FULL_CHECK_VOXELS = 2 ** 23
CHECK_SLICES = 16
# A full check evaluates the Field this many fixed voxels at a time: slabs rather than single
# slices save the per-call cost of the canonical-to-native evaluation (a quarter of a check on a
# 16 x 128 x 128 volume), while the memory of one slab stays small.
CHECK_SLAB_VOXELS = 2 ** 20


@dataclass(frozen=True, eq=False)
class CanonicalField:
    """A registration kept as the backend found it: a displacement on a (coarse) canonical
    grid plus the maps from that grid to both native grids; the :class:`Field` it stands for
    is evaluated lazily, slab by slab or point by point, so its cost follows what a caller
    reads, not the native grid.

    A dense Field is the special case canonical grid = fixed native grid (:meth:`of_dense`), an
    affine map the case of a constant zero displacement (:meth:`from_affine`).

    Parameters
    ----------
    disp : numpy.ndarray
        ``(3, Zc, Yc, Xc)``, channel order ``(z, y, x)``, in canonical voxels, on the FIXED
        canonical grid, pointing into the MOVING canonical grid. Stored as float16.
    fixed_to_native : numpy.ndarray
        ``(4, 4)`` homogeneous map, fixed canonical voxel -> fixed native voxel. Stored as float64.
    fixed_shape : tuple of int
        The fixed native shape ``(Z, Y, X)``.
    moving_to_native : numpy.ndarray
        ``(4, 4)`` homogeneous map, moving canonical voxel -> moving native voxel (including the
        pair's pre-alignment). Stored as float64.
    moving_shape : tuple of int
        The moving native shape ``(Z', Y', X')``.

    Raises
    ------
    ValueError
        When ``disp`` is not ``(3, Zc, Yc, Xc)``, a map is not a finite 4x4 matrix, or a shape
        is not three positive sizes.
    """

    disp: np.ndarray
    fixed_to_native: np.ndarray
    fixed_shape: tuple[int, int, int]
    moving_to_native: np.ndarray
    moving_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        disp = _check_disp(self.disp)
        object.__setattr__(self, "disp", disp.astype(np.float16, copy=False))
        for name in ("fixed_to_native", "moving_to_native"):
            m = np.asarray(getattr(self, name), dtype=np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all():
                raise ValueError(f"CanonicalField.{name} must be a finite 4x4 matrix, got shape {m.shape}")
            object.__setattr__(self, name, m)
        for name in ("fixed_shape", "moving_shape"):
            shape = tuple(int(n) for n in getattr(self, name))
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"CanonicalField.{name} must be three positive sizes, got {shape}")
            object.__setattr__(self, name, shape)
        object.__setattr__(self, "_to_canon", np.linalg.inv(self.fixed_to_native))
        object.__setattr__(self, "_plausible", False)   # set by check(): a frozen Field is checked once

    @property
    def nbytes(self) -> int:
        """Bytes held: the float16 displacement plus the two float64 4x4 maps."""
        return int(self.disp.nbytes + 2 * 16 * 8)

    def slab(self, start: int, stop: int) -> Field:
        """The dense Field of fixed slices ``start .. stop - 1``.

        Parameters
        ----------
        start, stop : int
            Fixed native slice range, ``0 <= start < stop <= Z``.

        Returns
        -------
        Field
            ``coords`` float32 ``(3, stop - start, Y, X)`` in moving native voxels, equal to
            ``dense().coords[:, start:stop]``. Its fixed voxel indices count from ``start``.

        Raises
        ------
        ValueError
            When ``[start, stop)`` is empty or not within the fixed slices.
        """
        if not 0 <= start < stop <= self.fixed_shape[0]:
            raise ValueError(f"slab [{start}, {stop}) is not within the {self.fixed_shape[0]} fixed slices")
        coords = _native_coords(self.disp, self._to_canon, self.moving_to_native,  # type: ignore[attr-defined]
                                self.fixed_shape, start, stop)
        return Field(coords, self.moving_shape)

    def dense(self) -> Field:
        """The whole Field on the fixed native grid.

        Returns
        -------
        Field
            ``coords`` float32 ``(3, Z, Y, X)`` in moving native voxels; :meth:`slab` of all slices.
        """
        return self.slab(0, self.fixed_shape[0])

    def map_points(self, points_zyx: np.ndarray) -> np.ndarray:
        """Map fixed native voxel points to moving native voxel points: the map itself
        evaluated at each point.

        At voxel centres this equals the dense Field; between them it is the exact map, where
        :meth:`Field.map_points` interpolates the dense one linearly (they differ by the map's
        curvature within a voxel).

        Parameters
        ----------
        points_zyx : numpy.ndarray
            ``(N, 3)`` fixed native voxel coordinates ``(z, y, x)``, any real values.

        Returns
        -------
        numpy.ndarray
            float32 ``(N, 3)`` moving native voxel coordinates ``(z, y, x)``.

        Raises
        ------
        ValueError
            When ``points_zyx`` is not ``(N, 3)``.
        """
        pts = _points(points_zyx)
        canon = apply_affine(self._to_canon, pts)  # type: ignore[attr-defined]
        d = self.disp.astype(np.float32)
        moved = np.stack([_sample(d[a], canon.T, order=1) for a in range(3)], axis=1)
        return apply_affine(self.moving_to_native, canon + moved).astype(np.float32)

    def warp_labels(self, moving_label_zyx: np.ndarray, num_classes: int, slab_slices: int = 8) -> np.ndarray:
        """:meth:`Field.warp_labels` of the whole fixed volume, computed ``slab_slices`` slices
        at a time so the soft one-hot of the whole volume never exists at once.

        Parameters
        ----------
        moving_label_zyx : numpy.ndarray
            Integer ``(Z', Y', X')`` = ``moving_shape`` class indices ``0 .. C - 1``, on the
            moving native grid.
        num_classes : int
            ``C``, background included.
        slab_slices : int
            Fixed slices evaluated at a time.

        Returns
        -------
        numpy.ndarray
            uint8 ``(Z, Y, X)`` on the fixed native grid; background (0) outside the moving
            volume.

        Raises
        ------
        ValueError
            As :meth:`Field.warp_onehot`.
        """
        Z = self.fixed_shape[0]
        return np.concatenate([self.slab(z, min(z + slab_slices, Z)).warp_labels(moving_label_zyx, num_classes)
                               for z in range(0, Z, slab_slices)])

    def check(self, where: str) -> "CanonicalField":
        """``self`` when plausible: :func:`validate_field` on its slices (every slice up to
        FULL_CHECK_VOXELS fixed voxels, CHECK_SLICES evenly spaced ones beyond).

        Once found plausible it is not checked again: a backend checks what it computes, and the
        oracle checks what it is handed (the same object, or one read from a cache).

        Parameters
        ----------
        where : str
            What the field is, named in the error.

        Returns
        -------
        CanonicalField
            ``self``.

        Raises
        ------
        ValueError
            Naming ``where``, when ``disp`` holds NaN or inf or :func:`validate_field` rejects
            a checked slab.
        """
        if self._plausible:
            return self
        if not np.isfinite(self.disp).all():
            bad = int((~np.isfinite(self.disp)).any(axis=0).sum())
            raise ValueError(f"{where}: Field holds NaN or inf at {bad} canonical voxel(s)")
        Z, Y, X = self.fixed_shape
        if Z * Y * X <= FULL_CHECK_VOXELS:
            step = max(1, CHECK_SLAB_VOXELS // (Y * X))
            slabs = [(z, min(z + step, Z)) for z in range(0, Z, step)]
        else:
            slabs = [(z, z + 1) for z in np.unique(np.linspace(0, Z - 1, CHECK_SLICES).round().astype(int)).tolist()]
        for start, stop in slabs:
            validate_field(self.slab(start, stop), where)
        object.__setattr__(self, "_plausible", True)
        return self

    @staticmethod
    def of_dense(field: Field) -> "CanonicalField":
        """A dense Field kept as it is: its own fixed grid is the canonical grid.

        Parameters
        ----------
        field : Field
            ``coords (3, Z, Y, X)`` on the fixed native grid.

        Returns
        -------
        CanonicalField
            ``disp`` = ``field.displacement`` (stored float16), both maps the identity.
        """
        return CanonicalField(field.displacement, np.eye(4), field.fixed_shape, np.eye(4), field.moving_shape)

    @staticmethod
    def from_affine(matrix: np.ndarray, fixed_shape: Sequence[int], moving_shape: Sequence[int]) -> "CanonicalField":
        """The CanonicalField of an affine map: a constant zero displacement on a one-voxel
        canonical grid.

        Parameters
        ----------
        matrix : numpy.ndarray
            ``(4, 4)`` homogeneous map from fixed native voxel ``(z, y, x, 1)`` to moving native
            voxel.
        fixed_shape : sequence of int
            The fixed native shape ``(Z, Y, X)``.
        moving_shape : sequence of int
            The moving native shape ``(Z', Y', X')``.

        Returns
        -------
        CanonicalField
            ``fixed_to_native`` the identity, ``moving_to_native`` = ``matrix``.

        Raises
        ------
        ValueError
            When ``matrix`` is not a finite 4x4 matrix or a shape is not three positive sizes.
        """
        return CanonicalField(np.zeros((3, 1, 1, 1), np.float16), np.eye(4), tuple(fixed_shape),
                              matrix, tuple(moving_shape))


# A plausible Field maps no fixed voxel further than one moving-volume extent beyond the moving
# volume, and is smooth: real transforms (affine, demons, B-spline, the net) have in-plane
# second differences of coords well below a voxel, while a map of noise has them of the order
# of the noise amplitude.
MAX_MEAN_ROUGHNESS = 1.0  # voxels: mean |second difference| of coords along y and x


def validate_field(field: Field, where: str) -> None:
    """Check that a Field is plausible. Used on every Field a backend computes and every Field
    read from a cache.

    Parameters
    ----------
    field : Field
        ``coords (3, Z, Y, X)`` on the fixed native grid, in moving native voxels.
    where : str
        What the field is, named in the error.

    Raises
    ------
    ValueError
        Naming ``where``, when ``field`` holds NaN or inf, maps a fixed voxel more than one
        moving-volume extent outside the moving volume, or is rough like noise (mean in-plane
        second difference above MAX_MEAN_ROUGHNESS voxels) on any of its fixed slices.
    """
    c = field.coords
    if not np.isfinite(c).all():
        bad = int((~np.isfinite(c)).any(axis=0).sum())
        raise ValueError(f"{where}: Field holds NaN or inf at {bad} voxel(s)")
    for axis, (name, n) in enumerate(zip("zyx", field.moving_shape)):
        lo, hi = float(c[axis].min()), float(c[axis].max())
        if lo < -0.5 - n or hi > n - 0.5 + n:
            raise ValueError(
                f"{where}: Field maps {name} to [{lo:.1f}, {hi:.1f}], more than one volume extent outside the "
                f"moving volume (0..{n - 1}); the registration failed or the stored Field is damaged")
    rough = []
    for axis in (2, 3):  # in-plane only: few thick slices make z differences legitimately coarse
        if c.shape[axis] >= 3:
            # each fixed slice judged alone, so a slab of slices gets the verdict of its slices one by one
            rough.append(float(np.abs(np.diff(c, n=2, axis=axis)).mean(axis=(0, 2, 3)).max()))
    if rough and max(rough) > MAX_MEAN_ROUGHNESS:
        raise ValueError(f"{where}: Field is not smooth (mean in-plane second difference {max(rough):.2f} voxels "
                         f"on its roughest slice, limit {MAX_MEAN_ROUGHNESS}); it looks like noise, not a registration")


def _axis_positions(matrix: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Positions along ``axis`` of a diagonal 4x4 map applied to indices 0 .. size - 1."""
    return matrix[axis, axis] * np.arange(size, dtype=np.float64) + matrix[axis, 3]
