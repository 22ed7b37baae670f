"""The learned registration network: voxelmorph's ``VxmPairwise`` on the canonical grid.

Inputs are canonical-grid images ``(B, 1, Z, Y, X)`` in [0, 1]: the MOVING volume is
voxelmorph's "source" and the FIXED volume its "target", so the returned displacement
``disp (B, 3, Z, Y, X)`` (canonical voxels, channel order (z, y, x)) satisfies
``warped(c) = moving(c + disp(c))`` on the fixed canonical grid, which is exactly what
:meth:`reg.field.Field.from_canonical` expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import voxelmorph as vxm
from torch import nn

from cctr.reg.options import option


@dataclass(frozen=True)
class NetConfig:
    nb_features: tuple[int, ...] = option((16, 32, 32, 32), "registration U-Net channels, one level each")
    integration_steps: int = option(5, "scaling-and-squaring steps; 0 = plain displacement (not diffeomorphic)")


class RegistrationNet(nn.Module):
    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        if config.integration_steps < 0:
            raise ValueError(f"integration_steps must be >= 0, got {config.integration_steps}")
        self.config = config
        self.vxm = vxm.nn.models.VxmPairwise(
            ndim=3,
            source_channels=1,
            target_channels=1,
            nb_features=list(config.nb_features),
            integration_steps=config.integration_steps,
        )
        self.transformer = vxm.nn.modules.SpatialTransformer()

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(disp (B, 3, Z, Y, X), moving warped onto fixed (B, 1, Z, Y, X))``."""
        disp, warped = self.vxm(moving, fixed, return_warped_source=True)
        return disp, warped

    def warp(self, volume: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Warp any moving-grid tensor (B, C, Z, Y, X), e.g. one-hot labels, by ``disp``."""
        return self.transformer(volume, disp)
