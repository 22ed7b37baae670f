"""The two cross-teaching students: a 2D U-Net and a 2D Swin transformer (MONAI's SwinUNETR).

Both map an image batch ``(B, 1, H, W)`` to a :class:`StudentOutput`:

- ``logits``: ``(B, C, H, W)``, one channel per class;
- ``features``: ``(B, F, H, W)``, the last decoder feature map, the one the classifier reads;
- ``embedding``: ``(B, D, H, W)`` with D = 128 by default, the projector head's per-pixel
  embedding, L2-normalised over dim 1 (what the pixel contrastive loss compares).

Which network a student is, and how big, is a :class:`StudentConfig`; :func:`build_student`
turns one into a module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cctr.seg.options import option


@dataclass(frozen=True)
class StudentOutput:
    logits: torch.Tensor     # (B, C, H, W)
    features: torch.Tensor   # (B, F, H, W)
    embedding: torch.Tensor  # (B, D, H, W), unit L2 norm over D


@dataclass(frozen=True)
class StudentConfig:
    """One student's architecture.

    ``kind`` is ``'unet'`` (uses ``widths``: channels per resolution level, finest first) or
    ``'swin'`` (MONAI ``SwinUNETR`` in 2D: ``feature_size`` must be a multiple of 12 and
    ``window_size`` is its attention window; the input sides must be multiples of 32, not
    both 32). ``dropout`` applies to the U-Net's encoder blocks and to SwinUNETR's drop rate.
    """

    kind: str = option("unet", "'unet' (2D U-Net) or 'swin' (MONAI SwinUNETR in 2D)")
    widths: tuple[int, ...] = option((16, 32, 64, 128), "unet: channels per resolution level, finest first")
    feature_size: int = option(12, "swin: feature size, a multiple of 12")
    window_size: int = option(6, "swin: attention window size")
    dropout: float = option(0.0, "dropout of the U-Net's encoder blocks / SwinUNETR's drop rate")


# SwinUNETR's stages: the same four in the paper's configuration and the CPU one, so not an option
SWIN_DEPTHS = (2, 2, 2, 2)
SWIN_HEADS = (3, 6, 12, 24)


class ProjectorHead(nn.Module):
    """Per-pixel MLP (two 1x1 convolutions) from features to an L2-normalised embedding."""

    def __init__(self, in_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, embedding_dim, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    # Instance norm, not batch norm: with one labeled patient and batches mixing labeled and
    # unlabeled slices, batch statistics let the U-Net fit the labeled slices in a way that does
    # not carry over to eval mode (validation Dice 0.3 against 0.9 on the phantom).
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    layers += [
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm2d(cout, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    ]
    return nn.Sequential(*layers)


class UNet2D(nn.Module):
    """A plain 2D U-Net: ``len(widths)`` levels, max-pool down, bilinear up + skip concat; each
    level two 3x3 convolutions with normalisation and leaky ReLU."""

    def __init__(self, in_channels: int, num_classes: int, cfg: StudentConfig, embedding_dim: int) -> None:
        super().__init__()
        widths = tuple(cfg.widths)
        if len(widths) < 2:
            raise ValueError(f"U-Net widths need at least two levels, got {widths}")
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_conv_block(cin, w, cfg.dropout))
            cin = w
        self.up = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(_conv_block(deep + shallow, shallow, 0.0))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        self.projector = ProjectorHead(widths[0], embedding_dim)
        self.levels = len(widths)

    def forward(self, image: torch.Tensor) -> StudentOutput:
        side = 2 ** (self.levels - 1)
        if image.shape[-1] % side or image.shape[-2] % side:
            raise ValueError(f"U-Net with {self.levels} levels needs H and W divisible by {side}, got {tuple(image.shape[-2:])}")
        skips = []
        x = image
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return StudentOutput(logits=self.classifier(x), features=x, embedding=self.projector(x))


class SwinStudent(nn.Module):
    """MONAI ``SwinUNETR`` in 2D with its output convolution replaced by our classifier, so the
    decoder's last feature map (``feature_size`` channels, full resolution) feeds both heads."""

    def __init__(self, in_channels: int, num_classes: int, cfg: StudentConfig, embedding_dim: int) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        if cfg.feature_size % 12:
            raise ValueError(f"SwinUNETR feature_size must be a multiple of 12, got {cfg.feature_size}")
        self.backbone = SwinUNETR(
            in_channels=in_channels,
            out_channels=num_classes,
            feature_size=cfg.feature_size,
            depths=SWIN_DEPTHS,
            num_heads=SWIN_HEADS,
            window_size=cfg.window_size,
            drop_rate=cfg.dropout,
            spatial_dims=2,
        )
        self.backbone.out = nn.Identity()
        self.classifier = nn.Conv2d(cfg.feature_size, num_classes, 1)
        self.projector = ProjectorHead(cfg.feature_size, embedding_dim)

    def forward(self, image: torch.Tensor) -> StudentOutput:
        h, w = image.shape[-2:]
        # five halvings; the instance norm of the 1/32 bottleneck needs more than one pixel
        if h % 32 or w % 32 or h * w < 2 * 32 * 32:
            raise ValueError(f"SwinUNETR needs H and W divisible by 32 and larger than 32x32, got {(h, w)}")
        features = self.backbone(image)
        return StudentOutput(logits=self.classifier(features), features=features, embedding=self.projector(features))


def build_student(cfg: StudentConfig, num_classes: int, embedding_dim: int = 128, in_channels: int = 1) -> nn.Module:
    """The module for ``cfg`` with a projector of ``embedding_dim`` (both students share it: the
    contrastive loss compares their embeddings in one set); ``ValueError`` for an unknown kind."""
    if cfg.kind == "unet":
        return UNet2D(in_channels, num_classes, cfg, embedding_dim)
    if cfg.kind == "swin":
        return SwinStudent(in_channels, num_classes, cfg, embedding_dim)
    raise ValueError(f"unknown student kind {cfg.kind!r}; expected 'unet' or 'swin'")
