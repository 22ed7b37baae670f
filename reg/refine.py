"""Test-time refinement of the learned registration: a few Adam steps per pair on the net's own
objective (image similarity + smoothness, :class:`reg.losses.RegistrationLoss`; no labels),
the learned answer to classical per-pair optimisation (docs/METHOD.md, "Test-time refinement").

Coarse to fine, as classical methods go:

1. ``steps`` Adam steps on a correction of the net's stationary velocity field, taken on a grid
   ``scale`` times coarser per axis (images average-pooled, the loss evaluated there; each step
   about ``scale**3`` times cheaper), then integrated as the net integrates, so the map stays
   diffeomorphic;
2. ``fine_steps`` on the canonical grid itself, on a small map ``psi`` composed on the fixed
   side of the integrated one, ``phi = phi0 o psi``: the moving image is warped by ``phi0`` once,
   then one warp per step. det J of the composition is the product of the two maps' det J, so
   ``psi`` (at most ``fine_steps * lr`` voxel, under the smoothness term) adds no folding where
   ``phi0`` has none unless its own gradient reaches -1.

Every tensor here is on the canonical grid: images ``(B, 1, Z, Y, X)``, velocities and
displacements ``(B, 3, Z, Y, X)`` in canonical voxels, ``warped(c) = moving(c + disp(c))``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from voxelmorph.nn import functional as vxm_fn

from cctr.reg.losses import RegistrationLoss
from cctr.reg.model import RegistrationNet
from cctr.reg.options import option


@dataclass(frozen=True)
class RefineConfig:
    """How the learned backend refines each pair (``learned:CKPT?refine=N&refine_scale=S&refine_fine=M``).

    The default, 16 steps on a grid twice as coarse then 4 on the canonical grid, reached
    sitk-demons + 0.02 pair Dice on held-out pairs of the three geometries measured, at about a
    third of the cost of 16 canonical-grid steps (docs/RESULTS.md). ``steps=0``: the net alone,
    whatever the other fields say."""

    steps: int = option(16, "spec 'refine': Adam steps per pair on the coarse grid; 0 = the net alone")
    scale: int = option(2, "spec 'refine_scale': how many times coarser per axis the grid of those steps is")
    fine_steps: int = option(4, "spec 'refine_fine': further steps on the canonical grid, on a composed map")
    lr = 0.1   # canonical voxels per Adam step (not an option: it never changed)

    def __post_init__(self) -> None:
        if min(self.steps, self.fine_steps) < 0 or self.scale < 1 or not self.lr > 0:
            raise ValueError(f"refinement: refine and refine_fine must be >= 0, refine_scale >= 1 and the "
                             f"learning rate > 0, got {self}")

    @property
    def active(self) -> bool:
        return self.steps > 0

    def check_grid(self, shape_zyx: tuple[int, ...]) -> None:
        """ValueError unless ``scale`` divides every axis of the net's canonical grid."""
        if self.active and any(n % self.scale for n in shape_zyx):
            raise ValueError(f"refine_scale={self.scale} must divide the net's canonical grid {tuple(shape_zyx)}")

    def described(self) -> dict[str, Any]:
        """Plain data for cache keys: every field, or nothing when refinement is off."""
        return {"refine": asdict(self)} if self.active else {}


def refine_displacement(net: RegistrationNet, fixed: torch.Tensor, moving: torch.Tensor, cfg: RefineConfig,
                        loss: RegistrationLoss) -> torch.Tensor:
    """The displacement after refining the net's answer for each pair.

    Parameters
    ----------
    net : RegistrationNet
        Its weights are not touched.
    fixed, moving : torch.Tensor
        ``(B, 1, Z, Y, X)`` canonical images.
    cfg : RefineConfig
    loss : RegistrationLoss
        The net's own loss (the checkpoint's :class:`reg.losses.LossConfig`).

    Returns
    -------
    torch.Tensor
        ``(B, 3, Z, Y, X)`` displacement in canonical voxels. The loss is the SUM of the pairs'
        own losses and Adam works element by element, so a pair's result does not depend on the
        pairs batched with it beyond float noise of the batched forward pass (which Adam's
        normalised steps can grow to ~1e-3 voxel).
    """
    steps_of = net.vxm.integration_steps
    with torch.no_grad():
        velocity = net.vxm(moving, fixed, return_field_type="velocity")
    if cfg.steps:
        velocity = _refine_velocity(velocity, fixed, moving, cfg, loss, steps_of)
    with torch.no_grad():
        disp = vxm_fn.integrate_vec(velocity, steps_of)
    if cfg.fine_steps:
        disp = _compose_fine(disp, fixed, moving, cfg, loss)
    return disp


def compose(disp0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The displacement ``(B, 3, Z, Y, X)`` of ``phi0 o psi``, ``phi0(c) = c + disp0(c)`` and
    ``psi(c) = c + u(c)``, both canonical voxels on the fixed grid: ``u(c) + disp0(c + u(c))``,
    ``disp0`` read with border padding (a point pushed off the grid keeps the edge's value)."""
    return u + vxm_fn.spatial_transform(disp0, u, non_spatial_dims=(0, 1), padding_mode="border")


def _optimise(base: torch.Tensor, to_disp: Callable[[torch.Tensor], torch.Tensor], fixed: torch.Tensor,
              moving: torch.Tensor, loss: RegistrationLoss, lr: float, steps: int) -> torch.Tensor:
    """The correction to ``base`` after ``steps`` Adam steps on it, the loss taken on the
    displacement ``to_disp(base + correction)`` ``(B, 3, Z, Y, X)`` of the grid of ``fixed``/``moving``."""
    correction = torch.zeros_like(base, requires_grad=True)
    optimiser = torch.optim.Adam([correction], lr=lr)
    with torch.enable_grad():   # callers may hold no_grad (the oracle does): this part needs gradients
        for _ in range(steps):
            disp = to_disp(base + correction)
            warped = vxm_fn.spatial_transform(moving, disp, non_spatial_dims=(0, 1))
            total = sum(loss(warped[b:b + 1], fixed[b:b + 1], disp[b:b + 1]).total for b in range(disp.shape[0]))
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
    return correction.detach()


def _refine_velocity(velocity: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, cfg: RefineConfig,
                     loss: RegistrationLoss, integration_steps: int) -> torch.Tensor:
    """``velocity`` plus ``scale * upsample(dv)``, where the correction ``dv`` on the grid ``scale``
    times coarser took ``cfg.steps`` Adam steps on the loss there (the factor turns coarse voxels
    into fine ones; at scale 1 nothing is resampled)."""
    shape, scale = tuple(velocity.shape[2:]), cfg.scale

    def integrate(v: torch.Tensor) -> torch.Tensor:   # scaling and squaring as the net integrates
        return vxm_fn.integrate_vec(v, integration_steps)

    if scale == 1:
        return velocity + _optimise(velocity, integrate, fixed, moving, loss, cfg.lr, cfg.steps)
    fixed, moving = F.avg_pool3d(fixed, scale), F.avg_pool3d(moving, scale)
    base = F.avg_pool3d(velocity, scale) / scale   # the velocity in coarse voxels
    correction = _optimise(base, integrate, fixed, moving, loss, cfg.lr / scale, cfg.steps)
    with torch.no_grad():
        return velocity + scale * F.interpolate(correction, size=shape, mode="trilinear", align_corners=False)


def _compose_fine(disp0: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, cfg: RefineConfig,
                  loss: RegistrationLoss) -> torch.Tensor:
    """The displacement of ``phi0 o psi`` after ``cfg.fine_steps`` Adam steps on ``psi``'s ``u``
    against similarity(moving o phi0 o psi, fixed) + smoothness of ``u`` (:func:`compose`)."""
    with torch.no_grad():
        warped0 = vxm_fn.spatial_transform(moving, disp0, non_spatial_dims=(0, 1))
    u = _optimise(torch.zeros_like(disp0), lambda d: d, fixed, warped0, loss, cfg.lr, cfg.fine_steps)
    with torch.no_grad():
        return compose(disp0, u)
