"""The students' losses: supervised 0.5 * (CE + Dice), cross teaching on hard pseudo-labels with
its sigmoid ramp-up, and the pixel contrastive loss (METHOD.md parts 2-4).

Layouts: logits ``(B, C, H, W)``; labels ``(B, H, W)`` int64 class indices; embeddings
``(B, D, H, W)`` L2-normalised over D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from cctr.seg.options import option


def supervised_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """0.5 * (cross-entropy + soft Dice over all classes, background included), the Dice
    pooled over the batch so a class absent from one slice does not count as a miss there.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, H, W)`` float, before softmax.
    label : torch.Tensor
        int64 ``(B, H, W)`` class indices ``0 .. C - 1``.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=0.5, lambda_ce=0.5)
    return loss(logits, label[:, None])


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (softmax of ``logits`` against the hard ``target``), pooled over the batch.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, H, W)`` float, before softmax.
    target : torch.Tensor
        int64 ``(B, H, W)`` class indices ``0 .. C - 1``.

    Returns
    -------
    torch.Tensor
        Scalar: 1 - soft Dice averaged over all C classes, background included.
    """
    return DiceLoss(to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])


def cross_teaching_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """A student's loss on the other student's hard pseudo-label (argmax, no gradient to the
    teacher).

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, H, W)``: the student's logits.
    teacher_logits : torch.Tensor
        ``(B, C, H, W)``: the other student's logits on the same samples.
    kind : str
        ``'dice'`` (:func:`dice_loss`), ``'ce'`` (cross-entropy) or ``'dice+ce'`` (0.5 each).

    Returns
    -------
    torch.Tensor
        Scalar.

    Raises
    ------
    ValueError
        When ``kind`` is none of these.
    """
    pseudo = teacher_logits.detach().argmax(dim=1)
    if kind == "dice":
        return dice_loss(logits, pseudo)
    if kind == "ce":
        return F.cross_entropy(logits, pseudo)
    if kind == "dice+ce":
        return 0.5 * (dice_loss(logits, pseudo) + F.cross_entropy(logits, pseudo))
    raise ValueError(f"unknown cross-teaching loss {kind!r}; expected 'dice', 'ce' or 'dice+ce'")


def sigmoid_rampup(step: int, rampup_steps: float) -> float:
    """The sigmoid ramp-up factor ``exp(-5 (1 - t)^2)``, ``t = step / rampup_steps`` clipped to [0, 1].

    Parameters
    ----------
    step : int
        The training step.
    rampup_steps : float
        Length of the ramp in steps; ``<= 0`` means no ramp.

    Returns
    -------
    float
        In ``[exp(-5), 1]``, 1 from ``rampup_steps`` on; 1 without a ramp.
    """
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


# where an unlabeled pixel's class and confidence in the contrastive pool come from
# (seg/objective.py: contrast_pool): the other student, the student itself, or both agreeing
PSEUDO_SOURCES = ("teacher", "own", "agree")


@dataclass(frozen=True)
class ContrastConfig:
    """Anchor sampling of the pixel contrastive loss. The paper gives N = 1000 and O = 500 without
    code; this project reads N as anchors per class and O as negative keys drawn per class
    (each anchor contrasts against the O keys of every other class), temperature 0.1.
    ``pseudo_source`` (one of PSEUDO_SOURCES) picks the pseudo-label of unlabeled pixels.

    Raises
    ------
    ValueError
        When ``pseudo_source`` is not in PSEUDO_SOURCES or ``temperature`` is not positive.
    """

    anchors_per_class: int = option(1000, "anchors drawn per class present (the paper's N)")
    negatives_per_class: int = option(500, "negative keys drawn per class (the paper's O)")
    temperature: float = option(0.1, "InfoNCE temperature")
    confidence: float = option(0.8, "an unlabeled pixel may be an anchor when its top-1 probability reaches this")
    pseudo_source: str = option("teacher", "pseudo-label of unlabeled pixels: 'teacher', 'own' or 'agree' (both students)")

    def __post_init__(self) -> None:
        if self.pseudo_source not in PSEUDO_SOURCES:
            raise ValueError(f"contrast.pseudo_source must be one of {PSEUDO_SOURCES}, got {self.pseudo_source!r}")
        if self.temperature <= 0:
            raise ValueError(f"contrast.temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True)
class ContrastPart:
    """One student's share of the joint pixel set F = F_A ∪ F_B."""

    embedding: torch.Tensor    # (B, D, H, W), unit norm over D
    classes: torch.Tensor      # (B, H, W) int64: ground truth or pseudo-label; -1 = not usable
    confidence: torch.Tensor   # (B, H, W) float in [0, 1]; 1 for ground truth


@dataclass(frozen=True)
class PartAnchors:
    """The anchors drawn in one part (student): ``flat_index`` int64 ``(A_p,)`` into that
    student's ``B*H*W`` pixels, ``classes`` int64 ``(A_p,)`` the class each was drawn for."""

    flat_index: torch.Tensor
    classes: torch.Tensor


@dataclass(frozen=True)
class ExtraKeys:
    """A second positive key per anchor of one part, in :class:`PartAnchors` order:
    ``vectors`` float ``(A_p, D)`` (normalised here; no gradient), ``valid`` bool ``(A_p,)``."""

    vectors: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class ContrastDraw:
    """What one step's pixel contrast drew over the pooled usable pixels of all parts: each
    anchor's and negative key's part, flat pixel index and class (``(A,)`` and ``(K,)``), and
    the number of anchors of each present class, in anchor order."""

    anchor_part: torch.Tensor
    anchor_flat: torch.Tensor
    anchor_class: torch.Tensor
    key_part: torch.Tensor
    key_flat: torch.Tensor
    key_class: torch.Tensor
    class_sizes: tuple[int, ...]

    def rows_of(self, part: int) -> torch.Tensor:
        """The anchor rows that belong to ``part``.

        Parameters
        ----------
        part : int
            Index of the part (student) in the ``parts`` the draw was made from.

        Returns
        -------
        torch.Tensor
            int64 ``(A_p,)`` rows into the draw's ``(A,)`` anchor tensors, ascending.
        """
        return (self.anchor_part == part).nonzero()[:, 0]

    def anchors_of(self, part: int) -> PartAnchors:
        """The anchors drawn in ``part``, in anchor order.

        Parameters
        ----------
        part : int
            Index of the part (student) in the ``parts`` the draw was made from.

        Returns
        -------
        PartAnchors
            ``flat_index`` and ``classes``, int64 ``(A_p,)`` each, at the rows :meth:`rows_of` gives.
        """
        rows = self.rows_of(part)
        return PartAnchors(self.anchor_flat[rows], self.anchor_class[rows])


def _pick(candidates: torch.Tensor, count: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """At most ``count`` entries of ``candidates`` (a 1D index tensor), uniformly without replacement."""
    if candidates.numel() <= count:
        return candidates
    order = torch.randperm(candidates.numel(), generator=generator)[:count]
    return candidates[order.to(candidates.device)]


def _gather(parts: Sequence[ContrastPart], part_idx: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    """Embeddings ``(N, D)`` of the pixels ``flat_idx`` (into B*H*W) of the parts ``part_idx``."""
    pieces, positions = [], []
    for p, part in enumerate(parts):
        mine = (part_idx == p).nonzero()[:, 0]
        _, _, h, w = part.embedding.shape
        f = flat_idx[mine]
        pieces.append(part.embedding[f // (h * w), :, (f % (h * w)) // w, f % w])
        positions.append(mine)
    return torch.cat(pieces)[torch.argsort(torch.cat(positions))]


def _info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
              negative_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-anchor ``-log(e^{a.p/t} / (e^{a.p/t} + sum_n e^{a.n/t}))``; ``negative_mask`` (A, K)
    says which of the K keys are negatives of each anchor. Returns ``(A,)``."""
    pos = (anchor * positive).sum(dim=1, keepdim=True) / temperature              # (A, 1)
    neg = (anchor @ negatives.T) / temperature                                     # (A, K)
    neg = neg.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return torch.logsumexp(logits, dim=1) - pos[:, 0]


def draw_anchors(parts: Sequence[ContrastPart], cfg: ContrastConfig = ContrastConfig(),
                 generator: Optional[torch.Generator] = None) -> Optional[ContrastDraw]:
    """The anchors and negative keys of one step (METHOD.md part 4): for every class present
    among the confident pixels (confidence >= ``cfg.confidence``) of all ``parts`` pooled, at
    most ``anchors_per_class`` anchors and ``negatives_per_class`` keys drawn uniformly from
    that class, so background is kept but cannot dominate.

    Parameters
    ----------
    parts : sequence of ContrastPart
        Each student's embeddings ``(B, D, H, W)``, classes and confidences ``(B, H, W)``;
        pixels of class -1 are never drawn.
    cfg : ContrastConfig
        Sampling options.
    generator : torch.Generator, optional
        Source of the uniform draws.

    Returns
    -------
    ContrastDraw or None
        Anchors ``(A,)`` and keys ``(K,)`` by part, flat pixel index into that part's ``B*H*W``
        pixels and class, grouped by class in ascending class order; None when fewer than two
        classes are present: there is nothing to contrast.
    """
    classes, part_of, flat_of = [], [], []
    for p, part in enumerate(parts):
        usable = (part.classes >= 0) & (part.confidence >= cfg.confidence)
        flat = usable.reshape(-1).nonzero()[:, 0]
        classes.append(part.classes.reshape(-1)[flat])
        part_of.append(torch.full_like(flat, p))
        flat_of.append(flat)
    cls, part_idx, flat_idx = torch.cat(classes), torch.cat(part_of), torch.cat(flat_of)
    present = torch.unique(cls)
    if present.numel() < 2:
        return None
    anchor_rows, key_rows = [], []
    for c in present:
        members = (cls == c).nonzero()[:, 0]
        anchor_rows.append(_pick(members, cfg.anchors_per_class, generator))
        key_rows.append(_pick(members, cfg.negatives_per_class, generator))
    anchors_i, keys_i = torch.cat(anchor_rows), torch.cat(key_rows)
    return ContrastDraw(part_idx[anchors_i], flat_idx[anchors_i], cls[anchors_i], part_idx[keys_i], flat_idx[keys_i],
                        cls[keys_i], tuple(r.numel() for r in anchor_rows))


def pixel_contrastive_loss(parts: Sequence[ContrastPart], draw: Optional[ContrastDraw], temperature: float,
                           extra: Sequence[Optional[ExtraKeys]] = ()) -> torch.Tensor:
    """Supervised pixel contrast over the union of ``parts`` at the anchors of ``draw``
    (:func:`draw_anchors`; METHOD.md part 4).

    Each anchor's positive key is the mean of its class's anchors (renormalised); its negatives
    are the drawn keys of every other class. ``extra[p]``, where given, is a second positive per
    anchor of part ``p`` (REPS, METHOD.md part 7): a valid one makes that anchor's loss the mean
    of two InfoNCE terms, one per positive. Keys carry no gradient (they are targets); anchors
    do.

    Parameters
    ----------
    parts : sequence of ContrastPart
        Each student's embeddings ``(B, D, H, W)``, unit norm over D, with classes and
        confidences ``(B, H, W)``.
    draw : ContrastDraw or None
        The anchors and keys of :func:`draw_anchors` on the same ``parts``.
    temperature : float
        InfoNCE temperature.
    extra : sequence of ExtraKeys or None
        Per part, in ``parts`` order, a second positive for each of its anchors (vectors
        ``(A_p, D)``, valid ``(A_p,)``) or None; may be shorter than ``parts``.

    Returns
    -------
    torch.Tensor
        Scalar: the mean per-anchor loss; 0 (with a graph) when ``draw`` is None.
    """
    if draw is None:
        return sum(part.embedding.sum() for part in parts) * 0.0
    # gather only the sampled pixels: copying every pixel's embedding costs more than the loss
    anchors = _gather(parts, draw.anchor_part, draw.anchor_flat)                    # (A, D)
    keys = _gather(parts, draw.key_part, draw.key_flat).detach()                   # (K, D)
    sizes = list(draw.class_sizes)
    centres = torch.stack([a.mean(dim=0) for a in anchors.detach().split(sizes)])  # (P, D)
    centres = F.normalize(centres, dim=1)
    centre_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    negative_mask = draw.anchor_class[:, None] != draw.key_class[None, :]
    loss = _info_nce(anchors, centres[centre_of], keys, negative_mask, temperature)

    extra_loss = torch.zeros_like(loss)
    has_extra = torch.zeros_like(loss, dtype=torch.bool)
    for p, keys_p in enumerate(extra):
        if keys_p is None:
            continue
        valid = keys_p.valid.to(device=loss.device, dtype=torch.bool)
        if not bool(valid.any()):
            continue
        rows = draw.rows_of(p)[valid]
        key = F.normalize(keys_p.vectors.to(loss.device)[valid].detach(), dim=1)
        extra_loss[rows] = _info_nce(anchors[rows], key, keys, negative_mask[rows], temperature)
        has_extra[rows] = True
    return torch.where(has_extra, 0.5 * (loss + extra_loss), loss).mean()
