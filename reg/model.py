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
    """Architecture of :class:`RegistrationNet`."""

    nb_features: tuple[int, ...] = option((16, 32, 32, 32), "registration U-Net channels, one level each")
    integration_steps: int = option(5, "scaling-and-squaring steps; 0 = plain displacement (not diffeomorphic)")


class RegistrationNet(nn.Module):
    """voxelmorph's ``VxmPairwise`` (3D, one channel per image) plus a spatial transformer that
    warps any moving-grid tensor by its displacement.

    Parameters
    ----------
    config : NetConfig
        U-Net channels and scaling-and-squaring steps.

    Raises
    ------
    ValueError
        When ``config.integration_steps`` is negative.
    """

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
        """Predict the displacement that registers ``moving`` to ``fixed``.

        Parameters
        ----------
        fixed, moving : torch.Tensor
            ``(B, 1, Z, Y, X)`` canonical-grid images in [0, 1]; ``moving`` is voxelmorph's
            source, ``fixed`` its target.

        Returns
        -------
        disp : torch.Tensor
            ``(B, 3, Z, Y, X)`` on the fixed canonical grid, in canonical voxels, channel order
            ``(z, y, x)``: ``warped(c) = moving(c + disp(c))`` (integrated when
            ``integration_steps > 0``).
        warped : torch.Tensor
            ``(B, 1, Z, Y, X)``: ``moving`` warped onto the fixed canonical grid by ``disp``.
        """
        disp, warped = self.vxm(moving, fixed, return_warped_source=True)
        return disp, warped

    def warp(self, volume: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Warp any moving-grid tensor, e.g. one-hot labels, by ``disp`` (linear interpolation).

        Parameters
        ----------
        volume : torch.Tensor
            ``(B, C, Z, Y, X)`` on the moving canonical grid.
        disp : torch.Tensor
            ``(B, 3, Z, Y, X)`` canonical voxels, channel order ``(z, y, x)``, as :meth:`forward`
            returns it.

        Returns
        -------
        torch.Tensor
            ``(B, C, Z, Y, X)`` on the fixed canonical grid: ``warped(c) = volume(c + disp(c))``.
        """
        return self.transformer(volume, disp)
