"""Registration Supervision Loss (RSL, METHOD.md part 6).

For every unlabeled sample of a batch, the atlas label is carried onto the very points of its
volume that the sample's pixels were read from (the step's :class:`joint.guidance.Guidance`),
so its pixels line up with the image's and a step costs the same on a 512 x 512 CT slice as on
a 64 x 64 one. The labels are warped as soft one-hot, linearly, and voted over the sample's
atlases; the argmax is a pseudo-label for each student: ``0.5 * (weighted CE + weighted Dice)``,
times ``lambda_rs`` ramped up like L_cps (the paper's schedule). Pixels that fall outside every
atlas get weight 0; optionally every other pixel is weighted by registration confidence
('max-prob': the top soft one-hot probability, i.e. how far from a label boundary the
interpolation landed; 'agreement': the fraction of atlases whose label agrees with the vote,
meaningful with the 'fused' policy).

A :class:`joint.gate.RegistrationGate` given to the hook closes RSL to a student whose
validation Dice has reached the registration's (``gate.mode``, METHOD.md part 6).

Where the run has hidden labels of the unlabeled volumes (``TrainData.diagnostic_labels``,
never used by a loss), the hook logs ``rsl/target_dice_hidden``: the foreground Dice of the
step's registration targets against them, over the pixels RSL trains on, and the pixel
accuracy there of the targets (``rsl/target_acc_hidden``) and of each student
(``rsl/acc_hidden_<student>``): whether the registration knows more than the students
where it teaches them.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cctr.joint.gate import RegistrationGate
from cctr.joint.guidance import Guidance
from cctr.seg.diagnostics import foreground_dice, hidden_labels_of
from cctr.seg.hooks import TrainerHook
from cctr.seg.losses import sigmoid_rampup
from cctr.seg.options import option
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentOutput

CONFIDENCE_MODES = ("none", "max-prob", "agreement")


@dataclass(frozen=True)
class RSLConfig:
    """RSL options; nested as ``rsl.*`` in :class:`joint.config.JointConfig`.

    Raises
    ------
    ValueError
        When ``confidence`` is not in CONFIDENCE_MODES or ``weight`` is negative.
    """

    weight: float = option(0.1, "RSL weight (lambda_rs) at full strength, ramped up like cross teaching")
    confidence: str = option("none", "per-pixel weight: 'none', 'max-prob' or 'agreement' of the atlases")

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCE_MODES:
            raise ValueError(f"rsl.confidence must be one of {CONFIDENCE_MODES}, got {self.confidence!r}")
        if self.weight < 0:
            raise ValueError(f"rsl.weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class RegistrationTargets:
    """The registration pseudo-labels of a batch's unlabeled samples, in sample pixels.

    ``index``: int64 ``(U,)`` positions of those samples in the batch.
    ``probs``: float32 ``(U, C, H, W)`` the resampled soft atlas vote.
    ``label``: int64 ``(U, H, W)`` its argmax.
    ``weight``: float32 ``(U, H, W)`` 0 outside every atlas, else the confidence (1 for 'none').
    """

    index: torch.Tensor
    probs: torch.Tensor
    label: torch.Tensor
    weight: torch.Tensor


def registration_targets(batch: SliceBatch, guidance: Guidance, step: int, confidence: str = "none") -> RegistrationTargets:
    """The atlas label(s) of the step's guidance on every unlabeled sample of ``batch``,
    sample-aligned.

    Parameters
    ----------
    batch : SliceBatch
        Samples ``(B, 1, H, W)``; its unlabeled rows get targets.
    guidance : Guidance
        The step's registration guidance (atlases and point Fields of each unlabeled row).
    step : int
        The training step (it picks the atlases).
    confidence : str
        One of :data:`CONFIDENCE_MODES`.

    Returns
    -------
    RegistrationTargets
        ``index (U,)`` of the U unlabeled rows, ascending, and their ``probs (U, C, H, W)``,
        ``label (U, H, W)`` and ``weight (U, H, W)`` in sample pixels (C classes, background
        included).
    """
    H, W = batch.image.shape[-2:]
    guides = guidance.of_batch(step, batch)
    index = torch.tensor(sorted(guides), dtype=torch.int64)
    probs, weights = [], []
    for b in index.tolist():
        guide = guides[b]
        warped = guidance.oracle.vote_at(guide.atlas_ids, guide.fields, guide.on_target)
        p = torch.from_numpy(warped.probs.astype(np.float32)).reshape(-1, H, W)
        agree = torch.from_numpy(warped.agreement.astype(np.float32)).reshape(H, W)
        inside = (p.sum(dim=0) > 0.5).float()
        if confidence == "max-prob":
            conf = p.max(dim=0).values / p.sum(dim=0).clamp_min(1e-6)
        elif confidence == "agreement":
            conf = agree
        else:
            conf = torch.ones_like(inside)
        probs.append(p)
        weights.append(inside * conf.clamp(0.0, 1.0))
    probs_t = torch.stack(probs) if probs else torch.zeros((0, guidance.oracle.num_classes, H, W))
    weight_t = torch.stack(weights) if weights else torch.zeros((0, H, W))
    return RegistrationTargets(index=index, probs=probs_t, label=probs_t.argmax(dim=1), weight=weight_t)


def weighted_ce_dice(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``0.5 * (CE + Dice)`` of logits against a hard label, with a per-pixel weight.

    Both terms ignore weight-0 pixels; Dice is the soft Dice averaged over all C classes
    (background included), as in the supervised loss.

    Parameters
    ----------
    logits : torch.Tensor
        ``(U, C, H, W)`` float, before softmax.
    label : torch.Tensor
        int64 ``(U, H, W)`` class indices ``0 .. C - 1``.
    weight : torch.Tensor
        ``(U, H, W)`` non-negative per-pixel weight, on the device of ``logits``.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a graph) when ``U`` is 0 or every weight is 0.
    """
    if logits.shape[0] == 0 or float(weight.sum()) <= 0:
        return logits.sum() * 0.0
    w = weight.to(logits.dtype)
    ce = (F.cross_entropy(logits, label, reduction="none") * w).sum() / w.sum()
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(label, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    wc = w[:, None]
    inter = (wc * prob * onehot).sum(dim=(0, 2, 3))
    denom = (wc * prob).sum(dim=(0, 2, 3)) + (wc * onehot).sum(dim=(0, 2, 3))
    dice = 1.0 - ((2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    return 0.5 * (ce + dice)


def student_labels(outputs: Mapping[str, StudentOutput], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each student's argmax at some batch rows, from detached logits (nothing read from them
    takes a gradient).

    Parameters
    ----------
    outputs : mapping of str to StudentOutput
        Student name -> its outputs, logits ``(B, C, H, W)``.
    rows : torch.Tensor
        int64 ``(R,)`` batch rows.

    Returns
    -------
    dict of str to torch.Tensor
        Student name -> int64 ``(R, H, W)`` class indices, on the CPU.
    """
    return {name: out.logits.detach()[rows.to(out.logits.device)].argmax(dim=1).cpu() for name, out in outputs.items()}


class RegistrationSupervision(TrainerHook):
    """RSL as a trainer hook: a loss per student against the batch's registration targets,
    weighted ``cfg.weight`` times the sigmoid ramp-up over ``rampup_steps``.

    ``last_targets`` keeps the most recent step's targets (detached) for logging and figures.

    Parameters
    ----------
    guidance : Guidance
        The run's registration guidance, shared with the other registration-guided hooks.
    cfg : RSLConfig
        RSL options.
    rampup_steps : float
        Length of the sigmoid ramp-up in steps; 0 for full weight from the start.
    hidden_labels : mapping of str to numpy.ndarray
        Case id -> uint8 ``(Z, Y, X)`` hidden label of the case's volume, read for
        ``metrics()`` only; may be empty.
    gate : RegistrationGate, optional
        When given, a student it closes gets no RSL (:mod:`joint.gate`).

    Raises
    ------
    ValueError
        When ``rampup_steps`` is negative.
    """

    name = "rsl"

    def __init__(self, guidance: Guidance, cfg: RSLConfig, rampup_steps: float = 0.0,
                 hidden_labels: Mapping[str, np.ndarray] = MappingProxyType({}),
                 gate: Optional[RegistrationGate] = None) -> None:
        if rampup_steps < 0:
            raise ValueError(f"RSL rampup_steps must be >= 0, got {rampup_steps}")
        self.guidance = guidance
        self.num_classes = guidance.oracle.num_classes
        self.cfg = cfg
        self.rampup_steps = float(rampup_steps)
        self.hidden = hidden_labels
        self.last_targets: RegistrationTargets | None = None
        self._metrics: dict[str, float] = {}
        self.gate = gate

    def losses(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput]) -> dict[str, torch.Tensor]:
        """Each student's RSL term of this step: ``lambda_rs`` ramped up times
        :func:`weighted_ce_dice` of its logits at the unlabeled rows against the registration
        targets.

        Parameters
        ----------
        step : int
            The training step.
        batch : SliceBatch
            The step's samples ``(B, 1, H, W)``, on the CPU.
        outputs : mapping of str to StudentOutput
            Student name -> its outputs on the batch, logits ``(B, C, H, W)``.

        Returns
        -------
        dict of str to torch.Tensor
            Student name -> weighted scalar; 0 (with a graph) for a student the gate closes.
        """
        open_to = [n for n in outputs if self.gate is None or self.gate.is_open(n)]
        # a zero term keeps the logged curve continuous; no registration query when no student takes it
        losses = {n: out.logits.sum() * 0.0 for n, out in outputs.items() if n not in open_to}
        if not open_to:
            self.last_targets, self._metrics = None, {}
            return losses
        targets = registration_targets(batch, self.guidance, step, self.cfg.confidence)
        self.last_targets = targets
        self._metrics = self._against_hidden(batch, targets, student_labels(outputs, targets.index)) if self.hidden else {}
        lam = self.cfg.weight * sigmoid_rampup(step, self.rampup_steps)
        for name in open_to:
            logits = outputs[name].logits[targets.index]
            losses[name] = lam * weighted_ce_dice(logits, targets.label.to(logits.device),
                                                  targets.weight.to(logits.device))
        return losses

    def _against_hidden(self, batch: SliceBatch, targets: RegistrationTargets,
                        labels: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Over the pixels with RSL weight > 0 whose volume has a hidden label: the targets'
        foreground Dice and pixel accuracy, and each student's accuracy; empty without any."""
        if not self.hidden or targets.index.numel() == 0:
            return {}
        truth, known = hidden_labels_of(batch, self.hidden, targets.index, self.num_classes)
        used = known & (targets.weight > 0)
        if not bool(used.any()):
            return {}
        out = {"target_acc_hidden": float((targets.label[used] == truth[used]).float().mean())}
        dice = foreground_dice(targets.label[used], truth[used], self.num_classes)
        if dice is not None:
            out["target_dice_hidden"] = dice
        for name, pred in labels.items():
            out[f"acc_hidden_{name}"] = float((pred[used] == truth[used]).float().mean())
        return out

    def metrics(self) -> dict[str, float]:
        """The last step's figures against hidden labels.

        Returns
        -------
        dict of str to float
            ``target_dice_hidden``, ``target_acc_hidden`` and ``acc_hidden_<student>`` of
            :meth:`_against_hidden`; empty without hidden labels on the step's RSL pixels.
        """
        return dict(self._metrics)
