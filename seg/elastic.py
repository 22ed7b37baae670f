"""Randomly deformed copies of the batch's labeled samples (``elastic.*``, METHOD.md part 6).

The control of the registration-synthesised samples (``joint.synth``): those give the students
the atlas's image and label deformed by a registration; these give them the same kind of pair,
deformed by a random smooth field of a size the user sets, with no registration and no
unlabeled volume behind it. If these did as well, the registration's maps would not be what
helps. Off by default (``elastic.weight: 0``); it works in every method, the supervised one too.

The field is white noise per in-plane axis, smoothed by a Gaussian of ``sigma_px`` sample pixels
and scaled so that its root-mean-square length is ``rms_px`` sample pixels; it is drawn from a
generator seeded by ``(seed, step)``, so a resumed run draws the same fields without a state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from cctr.seg.hooks import ExtraSamples, TrainerHook
from cctr.seg.slices import SliceBatch


@dataclass(frozen=True)
class ElasticConfig:
    """Options of the deformed copies; nested as ``elastic.*`` in :class:`seg.config.TrainConfig`."""

    weight: float = 0.0     # factor of their supervised loss; 0 turns the term off
    samples: int = 2        # per step, copies of the first labeled samples of the batch (at most all of them)
    rms_px: float = 1.0     # root-mean-square length of the displacement, sample pixels
    sigma_px: float = 4.0   # Gaussian smoothing of the noise it is made from, sample pixels

    def __post_init__(self) -> None:
        if self.weight < 0 or self.samples < 1 or self.rms_px < 0 or not self.sigma_px > 0:
            raise ValueError(f"elastic: weight >= 0, samples >= 1, rms_px >= 0 and sigma_px > 0 needed, got {self}")


def smooth_noise(count: int, hw: tuple[int, int], sigma_px: float, rms_px: float,
                 generator: torch.Generator) -> torch.Tensor:
    """``(count, H, W, 2)`` displacements in pixels, (row, col) order: Gaussian-smoothed white
    noise (reflected at the border) scaled to a root-mean-square length of ``rms_px`` each."""
    H, W = hw
    noise = torch.randn((count * 2, 1, H, W), generator=generator)
    radius = max(1, math.ceil(3 * sigma_px))
    if radius >= min(H, W):   # reflect padding needs a pad below the size
        raise ValueError(f"elastic.sigma_px={sigma_px} is too wide for {H}x{W} samples (3 sigma must be below the size)")
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    for pad, weights in (((0, 0, radius, radius), kernel.view(1, 1, -1, 1)), ((radius, radius, 0, 0), kernel.view(1, 1, 1, -1))):
        noise = F.conv2d(F.pad(noise, pad, mode="reflect"), weights)
    disp = noise.view(count, 2, H, W).permute(0, 2, 3, 1)
    length = disp.pow(2).sum(dim=-1).mean(dim=(1, 2)).sqrt().clamp_min(1e-12)
    return disp * (rms_px / length).view(count, 1, 1, 1)


def deform(image: torch.Tensor, label: torch.Tensor, disp_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (S, 1, H, W) and ``label`` (S, H, W) int64 read at ``pixel + disp_px`` (S, H, W, 2;
    row, col): the image bilinearly, the label at the nearest pixel, both 0 outside, as the
    sampler pads."""
    S, _, H, W = image.shape
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    at_r, at_c = rows + disp_px[..., 0], cols + disp_px[..., 1]
    # grid_sample's normalised coordinates, align_corners=True: -1 and 1 are the first and last pixel centres
    grid = torch.stack([2 * at_c / max(W - 1, 1) - 1, 2 * at_r / max(H - 1, 1) - 1], dim=-1)
    moved = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    moved_label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True)
    return moved, moved_label[:, 0].round().to(torch.int64)


class ElasticSamples(TrainerHook):
    """Adds ``cfg.samples`` randomly deformed copies of the batch's first labeled samples per step."""

    name = "elastic"

    def __init__(self, cfg: ElasticConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self._metrics: dict[str, float] = {}

    def extra_samples(self, step: int, batch: SliceBatch) -> Optional[ExtraSamples]:
        rows = torch.nonzero(batch.is_labeled, as_tuple=False).flatten()[: self.cfg.samples]
        H, W = batch.image.shape[-2:]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        disp = smooth_noise(len(rows), (H, W), self.cfg.sigma_px, self.cfg.rms_px, generator)
        image, label = deform(batch.image[rows], batch.label[rows], disp)
        self._metrics = {"rms_px": float(disp.pow(2).sum(-1).mean().sqrt())} if len(rows) else {}
        return ExtraSamples(image=image, label=label, weight=self.cfg.weight)

    def metrics(self) -> dict[str, float]:
        """``rms_px``: the root-mean-square displacement of this step's copies, sample pixels."""
        return dict(self._metrics)
