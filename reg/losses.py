"""The loss of the learned registration net, built on neurite's pieces: image similarity (local
NCC or MSE), smoothness of the predicted field, and soft Dice of warped labels.

:class:`RegistrationLoss` is the one place they are put together; pretraining
(:mod:`reg.train`), coupled training (:mod:`joint.coupled`) and test-time refinement
(:mod:`reg.refine`) all use it, so the objective a checkpoint was trained on is the one it is
refined on. All terms take canonical-grid tensors ``(B, C, Z, Y, X)`` and return a scalar to
MINIMISE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

import neurite.nn.functional as nef
import neurite.nn.modules as nem
import torch
from torch import nn

from cctr.reg.options import option


@dataclass(frozen=True)
class LossConfig:
    """Options of :class:`RegistrationLoss`.

    Raises
    ------
    ValueError
        When ``similarity`` is not ``'ncc'`` or ``'mse'``, or a weight is negative.
    """

    similarity: str = option("ncc", "image similarity: 'ncc' (local, windowed) or 'mse'")
    ncc_window: tuple[int, int, int] = option((3, 7, 7), "local NCC window (z, y, x) in canonical voxels; planned")
    smoothness_weight: float = option(0.3, "weight of the displacement's squared gradient; planned")
    dice_weight: float = option(0.0, "pretraining: > 0 adds Dice of warped labels on pairs where both are labeled")

    def __post_init__(self) -> None:
        if self.similarity not in ("ncc", "mse"):
            raise ValueError(f"unknown similarity {self.similarity!r}; expected 'ncc' or 'mse'")
        if self.smoothness_weight < 0 or self.dice_weight < 0:
            raise ValueError("loss weights must be >= 0")


def _clamped_local_ncc(a: torch.Tensor, b: torch.Tensor, window: Sequence[int], eps: float) -> torch.Tensor:
    """Squared local correlation per voxel, with the variances clamped at 0 and the result at
    [0, 1], so float rounding on flat or far-offset regions cannot break it: (B*C, 1, ...)."""
    flat_a = a.reshape(-1, 1, *a.shape[2:])
    flat_b = b.reshape(-1, 1, *b.shape[2:])
    moments = torch.cat([flat_a, flat_b, flat_a * flat_a, flat_b * flat_b, flat_a * flat_b], dim=1)
    s_a, s_b, s_aa, s_bb, s_ab = nef.box_filter(moments, window_size=list(window)).chunk(5, dim=1)
    n = float(torch.tensor(window).prod())
    cross = s_ab - s_a * s_b / n
    var_a = (s_aa - s_a * s_a / n).clamp(min=0.0)
    var_b = (s_bb - s_b * s_b / n).clamp(min=0.0)
    return (cross * cross / (var_a * var_b + eps)).clamp(0.0, 1.0)


class LocalNCCLoss(nn.Module):
    """1 - mean squared local correlation (neurite's NCC), window per axis (z, y, x).

    neurite asserts that every local coefficient lies in [0, 1]; float rounding on flat or
    far-offset regions can break that during training. When it does, the same quantity is
    recomputed with clamped variances instead of stopping the run.

    Parameters
    ----------
    window : int or sequence of int
        Window size in canonical voxels, one for all axes or one per axis ``(z, y, x)``.
    eps : float
        Added to the variance product in the denominator.
    """

    def __init__(self, window: Union[int, Sequence[int]] = (3, 9, 9), eps: float = 1e-5) -> None:
        super().__init__()
        self.window = [int(window)] * 3 if isinstance(window, int) else [int(w) for w in window]
        self.eps = eps
        self._ncc = nem.NCC(window_size=self.window, eps=eps)

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """1 - mean squared local correlation of two images.

        Parameters
        ----------
        warped, fixed : torch.Tensor
            ``(B, C, Z, Y, X)`` on the fixed canonical grid: the moving image warped onto it,
            and the fixed image.

        Returns
        -------
        torch.Tensor
            Scalar in [0, 1], 0 for perfectly correlated images.
        """
        try:
            score = self._ncc(warped, fixed).mean()
        except AssertionError:
            score = _clamped_local_ncc(warped, fixed, self.window, self.eps).mean()
        return 1.0 - score


class MSELoss(nn.Module):
    """Mean squared difference of two images (neurite's MSE)."""

    def __init__(self) -> None:
        super().__init__()
        self._mse = nem.MSE()

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of two images.

        Parameters
        ----------
        warped, fixed : torch.Tensor
            ``(B, C, Z, Y, X)`` on the fixed canonical grid: the moving image warped onto it,
            and the fixed image.

        Returns
        -------
        torch.Tensor
            Scalar, in squared intensity units.
        """
        return self._mse(warped, fixed)


class SmoothnessLoss(nn.Module):
    """Mean squared spatial gradient of a field (B, 3, Z, Y, X), neurite's SpatialGradient.

    Parameters
    ----------
    penalty : str
        ``'l2'`` (squared differences) or ``'l1'`` (absolute differences).
    """

    def __init__(self, penalty: str = "l2") -> None:
        super().__init__()
        self._grad = nem.SpatialGradient(penalty=penalty)

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """Mean penalty of the field's finite differences along each spatial axis.

        Parameters
        ----------
        field : torch.Tensor
            ``(B, 3, Z, Y, X)`` displacement in canonical voxels, channel order ``(z, y, x)``.

        Returns
        -------
        torch.Tensor
            Scalar; in squared canonical voxels for ``'l2'``.
        """
        return self._grad(field)


class SoftDiceLoss(nn.Module):
    """1 - mean soft Dice over FOREGROUND classes of one-hot maps (B, C, Z, Y, X) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self._dice = nem.Dice(reduction=None)

    def forward(self, warped_onehot: torch.Tensor, fixed_onehot: torch.Tensor) -> torch.Tensor:
        """1 - soft Dice averaged over the batch and the foreground classes ``1 .. C - 1``.

        Parameters
        ----------
        warped_onehot, fixed_onehot : torch.Tensor
            ``(B, C, Z, Y, X)`` one-hot (or soft) maps on the fixed canonical grid, channel 0 the
            background; clamped to [0, 1] here.

        Returns
        -------
        torch.Tensor
            Scalar in [0, 1].
        """
        dice = self._dice(warped_onehot.clamp(0.0, 1.0), fixed_onehot.clamp(0.0, 1.0))  # (B, C)
        return 1.0 - dice[:, 1:].mean()


def similarity_loss(name: str, ncc_window: Sequence[int]) -> nn.Module:
    """The image similarity loss named ``name``.

    Parameters
    ----------
    name : str
        ``'ncc'`` or ``'mse'``.
    ncc_window : sequence of int
        Local NCC window ``(z, y, x)`` in canonical voxels; unused for ``'mse'``.

    Returns
    -------
    torch.nn.Module
        :class:`LocalNCCLoss` or :class:`MSELoss`, called as ``loss(warped, fixed)`` on
        ``(B, C, Z, Y, X)`` tensors.

    Raises
    ------
    ValueError
        When ``name`` is neither.
    """
    if name == "ncc":
        return LocalNCCLoss(ncc_window)
    if name == "mse":
        return MSELoss()
    raise ValueError(f"unknown similarity {name!r}; expected 'ncc' or 'mse'")


class ImageTerms(NamedTuple):
    """The image part of the registration loss: both terms unweighted, and their weighted sum."""

    similarity: torch.Tensor
    smoothness: torch.Tensor
    total: torch.Tensor


class RegistrationLoss(nn.Module):
    """``similarity(warped, fixed) + smoothness_weight * smoothness(disp)``, and the Dice term of
    warped labels its callers weigh themselves (pretraining by ``cfg.dice_weight``, coupled
    training per pair by whose labels they are).

    Parameters
    ----------
    cfg : LossConfig
        The checkpoint's loss options (``dice_weight`` is read by the callers, not here).
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.similarity = similarity_loss(cfg.similarity, cfg.ncc_window)
        self.smoothness = SmoothnessLoss()
        self.soft_dice = SoftDiceLoss()

    def forward(self, warped: torch.Tensor, fixed: torch.Tensor, disp: torch.Tensor) -> ImageTerms:
        """The image part of the loss.

        Parameters
        ----------
        warped, fixed : torch.Tensor
            ``(B, 1, Z, Y, X)``: the moving image warped onto the fixed canonical grid, and the fixed image.
        disp : torch.Tensor
            ``(B, 3, Z, Y, X)``: the displacement in canonical voxels, ``warped(c) = moving(c + disp(c))``.

        Returns
        -------
        ImageTerms
            Scalars: similarity, smoothness and ``similarity + smoothness_weight * smoothness``.
        """
        sim, smooth = self.similarity(warped, fixed), self.smoothness(disp)
        return ImageTerms(sim, smooth, sim + self.cfg.smoothness_weight * smooth)

    def dice(self, warped_onehot: torch.Tensor, fixed_onehot: torch.Tensor) -> torch.Tensor:
        """1 - mean foreground soft Dice of warped labels.

        Parameters
        ----------
        warped_onehot, fixed_onehot : torch.Tensor
            ``(B, C, Z, Y, X)`` one-hot maps in [0, 1] on the fixed canonical grid: the moving
            labels warped onto it, and the fixed labels. Multiply both by a mask beforehand to
            leave voxels out.

        Returns
        -------
        torch.Tensor
            Scalar to minimise, weighted by the callers.
        """
        return self.soft_dice(warped_onehot, fixed_onehot)
