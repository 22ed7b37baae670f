"""2D training samples cut from 3D volumes, with the exact geometry back to the volume.

Every sample is one slice ``z`` of a volume ``(Z, Y, X)`` resampled onto an ``(H, W)`` grid by
ONE 3x3 homogeneous matrix ``to_volume`` that maps a sample pixel ``(row, col, 1)`` to a
voxel position ``(y, x, 1)`` of slice ``z`` (voxel units, voxel centres at integers). The
resize to the training size and the augmentation (rotation, flips, zoom) are all folded into
that matrix, so :func:`resample_slice` puts any map aligned with the volume (image, label,
a warped atlas label, one-hot maps) through exactly the same transform. Intensity
augmentation changes values only, never geometry.

:class:`SliceSampler` draws batches (:class:`SliceBatch`): a labeled part first, then an
unlabeled part, sizes configurable, from a numpy generator whose state is saved for an exact
resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from cctr.seg.data.case import Case
from cctr.seg.options import option

Array = Union[np.ndarray, torch.Tensor]

NORMALIZATIONS = ("zscore", "clip-zscore", "none")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of a training sample; ranges are uniform, flips are per axis."""

    rotation_deg: float = option(20.0, "in-plane rotation drawn from [-rotation_deg, rotation_deg] degrees")
    flip: bool = option(False, "flip rows and columns, each with probability 0.5")
    zoom: tuple[float, float] = option((0.9, 1.1), "range of the content magnification")
    contrast: tuple[float, float] = option((0.9, 1.1), "range of the intensity factor a (image * a + b)")
    brightness: tuple[float, float] = option((-0.1, 0.1), "range of the intensity offset b, normalised units")


def augment_intensity(image: Array, augment: AugmentConfig, rng: np.random.Generator) -> Array:
    """``image * a + b``, contrast ``a`` then brightness ``b`` drawn from ``rng`` in that order."""
    return image * rng.uniform(*augment.contrast) + rng.uniform(*augment.brightness)


@dataclass(frozen=True)
class SliceBatch:
    """A training batch: the labeled samples first, then the unlabeled ones."""

    image: torch.Tensor        # (B, 1, H, W) float32
    label: torch.Tensor        # (B, H, W) int64, -1 where unlabeled
    is_labeled: torch.Tensor   # (B,) bool
    case_id: list[str]
    slice_index: torch.Tensor  # (B,) int64
    to_volume: torch.Tensor    # (B, 3, 3) float32: sample (row, col, 1) -> voxel (y, x, 1)

    @property
    def num_labeled(self) -> int:
        return int(self.is_labeled.sum())

    def rows(self, index: torch.Tensor) -> "SliceBatch":
        """The samples at ``index`` (int64), in that order."""
        idx = index.tolist()
        return SliceBatch(self.image[index], self.label[index], self.is_labeled[index], [self.case_id[i] for i in idx],
                          self.slice_index[index], self.to_volume[index])


@dataclass(frozen=True)
class TrainVolume:
    """A case ready for slicing: intensities normalised, arrays as tensors."""

    case_id: str
    image: torch.Tensor            # (Z, Y, X) float32, normalised
    label: torch.Tensor | None     # (Z, Y, X) uint8, or None when unlabeled


def normalize_intensity(image_zyx: np.ndarray, method: str = "zscore",
                        window: Optional[tuple[float, float]] = None) -> np.ndarray:
    """Per-volume intensity normalisation: ``'zscore'`` (zero mean, unit std over the volume),
    ``'clip-zscore'`` (values clipped to ``window`` first: CT, where air and bone would
    otherwise set the scale) or ``'none'``. Returns float32 ``(Z, Y, X)``."""
    image = np.asarray(image_zyx, dtype=np.float32)
    if method == "none":
        return image
    if method == "clip-zscore":
        if window is None or not window[0] < window[1]:
            raise ValueError(f"normalisation 'clip-zscore' needs intensity_window (low, high) with low < high, got {window}")
        image = np.clip(image, window[0], window[1])
        method = "zscore"
    if method == "zscore":
        std = float(image.std())
        # a constant volume has no contrast to keep; centring it is all that is meaningful
        return ((image - image.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    raise ValueError(f"unknown intensity normalisation {method!r}; expected one of {NORMALIZATIONS}")


def prepare_volume(case: Case, normalization: str = "zscore", with_label: bool = True,
                   window: Optional[tuple[float, float]] = None) -> TrainVolume:
    """``case`` as a :class:`TrainVolume` (its label dropped unless ``with_label``)."""
    label = torch.from_numpy(case.label.copy()) if with_label and case.label is not None else None
    return TrainVolume(case.case_id, torch.from_numpy(normalize_intensity(case.image, normalization, window)), label)


def resize_matrix(volume_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """``to_volume`` of a plain resize: sample pixel centres spread evenly over the slice
    (pixel-centre convention, so the image edges line up, not the edge pixels' centres)."""
    (vy, vx), (h, w) = volume_hw, out_hw
    sy, sx = vy / h, vx / w
    return np.array([[sy, 0.0, 0.5 * sy - 0.5], [0.0, sx, 0.5 * sx - 0.5], [0.0, 0.0, 1.0]])


def augment_matrix(out_hw: tuple[int, int], angle_rad: float, flip_rows: bool, flip_cols: bool, zoom: float) -> np.ndarray:
    """Map from an augmented sample pixel to the un-augmented sample pixel: rotation by
    ``angle_rad``, flips and ``zoom`` (> 1 magnifies) about the sample centre."""
    ch, cw = (out_hw[0] - 1) / 2.0, (out_hw[1] - 1) / 2.0
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([-1.0 if flip_rows else 1.0, -1.0 if flip_cols else 1.0]) / zoom
    centre = np.array([ch, cw])
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = centre - linear @ centre
    return out


def _sampling_grid(to_volume: torch.Tensor, out_hw: tuple[int, int], volume_hw: tuple[int, int]) -> torch.Tensor:
    """``grid_sample`` grid ``(1, H, W, 2)`` (x, y in [-1, 1], align_corners=True) of ``to_volume``."""
    h, w = out_hw
    rows = torch.arange(h, dtype=torch.float64, device=to_volume.device)
    cols = torch.arange(w, dtype=torch.float64, device=to_volume.device)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    m = to_volume.to(torch.float64)
    y = m[0, 0] * r + m[0, 1] * c + m[0, 2]
    x = m[1, 0] * r + m[1, 1] * c + m[1, 2]
    vy, vx = volume_hw
    grid = torch.stack([2.0 * x / (vx - 1) - 1.0, 2.0 * y / (vy - 1) - 1.0], dim=-1)
    return grid[None].to(torch.float32)


def resample_slice(
    volume: Array,
    z: int,
    to_volume: Array,
    out_hw: tuple[int, int],
    mode: str = "linear",
    padding: str = "zeros",
) -> Array:
    """Resample slice ``z`` of ``volume`` onto an ``(H, W)`` sample grid through ``to_volume``.

    ``volume`` is ``(Z, Y, X)`` or ``(C, Z, Y, X)``, numpy or torch; the result is ``(H, W)``
    or ``(C, H, W)`` of the same kind and dtype. Sample pixel ``(r, c)`` takes the value at
    voxel ``to_volume @ (r, c, 1)`` of slice ``z``: interpolated bilinearly (``'linear'``) or
    from the nearest voxel (``'nearest'``, rounding half to even). Points outside the slice
    read 0 (``padding='zeros'``) or the nearest edge voxel (``'border'``).
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    as_numpy = isinstance(volume, np.ndarray)
    vol = torch.from_numpy(np.ascontiguousarray(volume)) if as_numpy else volume
    if vol.ndim not in (3, 4):
        raise ValueError(f"volume must be (Z, Y, X) or (C, Z, Y, X), got shape {tuple(vol.shape)}")
    plane = vol[z][None] if vol.ndim == 3 else vol[:, z]  # (C, Y, X)
    vy, vx = plane.shape[-2:]
    if vy < 2 or vx < 2:
        raise ValueError(f"slice must be at least 2x2 voxels, got {vy}x{vx}")
    matrix = torch.as_tensor(np.asarray(to_volume) if isinstance(to_volume, np.ndarray) else to_volume, device=plane.device)
    grid = _sampling_grid(matrix, tuple(out_hw), (vy, vx))
    out = F.grid_sample(
        plane[None].to(torch.float32),
        grid,
        mode="bilinear" if mode == "linear" else "nearest",
        padding_mode=padding,
        align_corners=True,
    )[0]
    if not plane.dtype.is_floating_point:
        out = out.round()
    out = out.to(plane.dtype)
    if vol.ndim == 3:
        out = out[0]
    return out.numpy() if as_numpy else out


def pixel_voxels(batch: SliceBatch, flat_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample index (N,) and volume voxel (N, 3) (z, y, x), real-valued, of flat pixel indices
    into ``B*H*W``: where in its volume each pixel was read (the sample's ``to_volume``)."""
    H, W = batch.image.shape[-2:]
    idx = flat_index.detach().cpu().long()
    b = idx // (H * W)
    pix = idx % (H * W)
    rc1 = torch.stack([(pix // W).float(), (pix % W).float(), torch.ones(idx.shape[0])], dim=1)  # (A, 3)
    yx = torch.einsum("aij,aj->ai", batch.to_volume[b].float(), rc1)[:, :2]
    z = batch.slice_index[b].float()
    return b, torch.cat([z[:, None], yx], dim=1)


def sample_voxels(batch: SliceBatch, b: int) -> torch.Tensor:
    """Volume voxel ``(H*W, 3)`` (z, y, x), real-valued, of every pixel of sample ``b``, row-major:
    where in its volume each of the sample's pixels was read."""
    H, W = batch.image.shape[-2:]
    return pixel_voxels(batch, b * H * W + torch.arange(H * W))[1]


class SliceSampler:
    """Draws :class:`SliceBatch` es: ``labeled_batch`` labeled samples, then ``unlabeled_batch``
    unlabeled ones. Each sample is a slice drawn uniformly over all slices of its pool, resized
    to ``out_hw`` and augmented when ``augment`` is given.

    All randomness comes from one numpy generator; :meth:`state_dict` / :meth:`load_state_dict`
    save and restore it, so a resumed run draws the very batches an uninterrupted one would.
    """

    def __init__(
        self,
        labeled: Sequence[TrainVolume],
        unlabeled: Sequence[TrainVolume],
        labeled_batch: int,
        unlabeled_batch: int,
        out_hw: tuple[int, int],
        augment: AugmentConfig | None,
        seed: int,
    ) -> None:
        if labeled_batch < 1:
            raise ValueError(f"labeled_batch must be at least 1, got {labeled_batch}")
        if not labeled:
            raise ValueError("no labeled volumes to sample from")
        if any(v.label is None for v in labeled):
            raise ValueError(f"labeled pool holds unlabeled volumes: {[v.case_id for v in labeled if v.label is None]}")
        if unlabeled_batch > 0 and not unlabeled:
            raise ValueError(f"unlabeled_batch is {unlabeled_batch} but there are no unlabeled volumes")
        self.labeled, self.unlabeled = tuple(labeled), tuple(unlabeled)
        self.labeled_batch, self.unlabeled_batch = labeled_batch, unlabeled_batch
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._labeled_slices = self._slice_table(self.labeled)
        self._unlabeled_slices = self._slice_table(self.unlabeled)

    @staticmethod
    def _slice_table(volumes: Sequence[TrainVolume]) -> np.ndarray:
        """``(N, 2)`` (volume index, z) of every slice of ``volumes``."""
        rows = [(i, z) for i, v in enumerate(volumes) for z in range(v.image.shape[0])]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _draw_matrix(self, volume_hw: tuple[int, int]) -> np.ndarray:
        base = resize_matrix(volume_hw, self.out_hw)
        a = self.augment
        if a is None:
            return base
        angle = math.radians(self.rng.uniform(-a.rotation_deg, a.rotation_deg))
        flips = self.rng.random(2) < 0.5 if a.flip else (False, False)
        zoom = self.rng.uniform(*a.zoom)
        return base @ augment_matrix(self.out_hw, angle, bool(flips[0]), bool(flips[1]), zoom)

    def _sample(self, volume: TrainVolume, z: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        # resample through the float32 matrix the batch records, so the record is exact
        matrix = self._draw_matrix(tuple(volume.image.shape[1:])).astype(np.float32)
        image = resample_slice(volume.image, z, matrix, self.out_hw, "linear")
        if self.augment is not None:
            image = augment_intensity(image, self.augment, self.rng)
        if volume.label is None:
            label = torch.full(self.out_hw, -1, dtype=torch.int64)
        else:
            label = resample_slice(volume.label, z, matrix, self.out_hw, "nearest").to(torch.int64)
        return image, label, matrix

    def next_batch(self) -> SliceBatch:
        picks = [(self.labeled, self._labeled_slices, self.labeled_batch, True),
                 (self.unlabeled, self._unlabeled_slices, self.unlabeled_batch, False)]
        images, labels, flags, ids, zs, mats = [], [], [], [], [], []
        for volumes, table, count, labeled in picks:
            if count == 0:
                continue
            for row in self.rng.integers(0, len(table), size=count):
                vi, z = (int(v) for v in table[row])
                image, label, matrix = self._sample(volumes[vi], z)
                images.append(image)
                labels.append(label)
                flags.append(labeled)
                ids.append(volumes[vi].case_id)
                zs.append(z)
                mats.append(matrix)
        return SliceBatch(
            image=torch.stack(images)[:, None].to(torch.float32),
            label=torch.stack(labels),
            is_labeled=torch.tensor(flags, dtype=torch.bool),
            case_id=ids,
            slice_index=torch.tensor(zs, dtype=torch.int64),
            to_volume=torch.from_numpy(np.stack(mats)).to(torch.float32),
        )
