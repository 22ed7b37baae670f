"""The students' losses: supervised 0.5 * (CE + Dice), cross teaching on hard pseudo-labels with
its sigmoid ramp-up, and the pixel contrastive loss (METHOD.md parts 2-4).

Layouts: logits ``(B, C, H, W)``; labels ``(B, H, W)`` int64 class indices; embeddings
``(B, D, H, W)`` L2-normalised over D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

# extra_positive(anchor_flat_index (A,)) -> (key (A, D), valid (A,)); the flat index is into
# B*H*W of ONE student's embedding of the joint (labeled + unlabeled) batch
ExtraPositive = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def supervised_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """0.5 * (cross-entropy + soft Dice over all classes, background included), the Dice
    pooled over the batch so a class absent from one slice does not count as a miss there."""
    loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=0.5, lambda_ce=0.5)
    return loss(logits, label[:, None])


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (softmax of ``logits`` against the hard ``target``), pooled over the batch."""
    return DiceLoss(to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])


def cross_teaching_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """A student's loss on the other student's hard pseudo-label (argmax, no gradient to the
    teacher). ``kind``: ``'dice'``, ``'ce'`` or ``'dice+ce'`` (0.5 each)."""
    pseudo = teacher_logits.detach().argmax(dim=1)
    if kind == "dice":
        return dice_loss(logits, pseudo)
    if kind == "ce":
        return F.cross_entropy(logits, pseudo)
    if kind == "dice+ce":
        return 0.5 * (dice_loss(logits, pseudo) + F.cross_entropy(logits, pseudo))
    raise ValueError(f"unknown cross-teaching loss {kind!r}; expected 'dice', 'ce' or 'dice+ce'")


def sigmoid_rampup(step: int, rampup_steps: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = step / rampup_steps`` clipped to [0, 1]; 1 without a ramp."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@dataclass(frozen=True)
class ContrastConfig:
    """Anchor sampling of the pixel contrastive loss. The paper gives N = 1000 and O = 500 without
    code; this project reads N as anchors per class and O as negative keys drawn per class
    (each anchor contrasts against the O keys of every other class), temperature 0.1."""

    anchors_per_class: int = 1000
    negatives_per_class: int = 500
    temperature: float = 0.1
    confidence: float = 0.8   # an unlabeled pixel may be an anchor when its top-1 probability is at least this


@dataclass(frozen=True)
class ContrastPart:
    """One student's share of the joint pixel set F = F_A ∪ F_B."""

    embedding: torch.Tensor    # (B, D, H, W), unit norm over D
    classes: torch.Tensor      # (B, H, W) int64: ground truth or pseudo-label; -1 = not usable
    confidence: torch.Tensor   # (B, H, W) float in [0, 1]; 1 for ground truth
    extra_positive: Optional[ExtraPositive] = None


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


def pixel_contrastive_loss(
    parts: Sequence[ContrastPart],
    cfg: ContrastConfig = ContrastConfig(),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Supervised pixel contrast over the union of ``parts`` (METHOD.md part 4).

    For every class present among the confident pixels (confidence >= ``cfg.confidence``),
    at most ``anchors_per_class`` anchors are drawn uniformly from that class, pooled over all
    parts, so background is kept but cannot dominate. Each anchor's positive key is the mean
    of its class's anchors (renormalised); its negatives are ``negatives_per_class`` drawn
    keys of every other class. A part's ``extra_positive`` callback adds a second positive
    per anchor where valid; such anchors average the InfoNCE of both positives. Keys carry no
    gradient (they are targets); anchors do. Returns a scalar, 0 (with a graph) when fewer
    than two classes are present, since there is then nothing to contrast.
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
    zero = sum(part.embedding.sum() for part in parts) * 0.0
    if present.numel() < 2:
        return zero

    anchor_rows, key_rows = [], []
    for c in present:
        members = (cls == c).nonzero()[:, 0]
        anchor_rows.append(_pick(members, cfg.anchors_per_class, generator))
        key_rows.append(_pick(members, cfg.negatives_per_class, generator))
    anchors_i, keys_i = torch.cat(anchor_rows), torch.cat(key_rows)
    # gather only the sampled pixels: copying every pixel's embedding costs more than the loss
    anchors = _gather(parts, part_idx[anchors_i], flat_idx[anchors_i])           # (A, D)
    anchor_cls = cls[anchors_i]
    keys = _gather(parts, part_idx[keys_i], flat_idx[keys_i]).detach()           # (K, D)
    key_cls = cls[keys_i]

    sizes = [r.numel() for r in anchor_rows]
    centres = torch.stack([a.mean(dim=0) for a in anchors.detach().split(sizes)])  # (P, D)
    centres = F.normalize(centres, dim=1)
    centre_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    negative_mask = anchor_cls[:, None] != key_cls[None, :]
    loss = _info_nce(anchors, centres[centre_of], keys, negative_mask, cfg.temperature)

    extra_loss = torch.zeros_like(loss)
    has_extra = torch.zeros_like(loss, dtype=torch.bool)
    for p, part in enumerate(parts):
        if part.extra_positive is None:
            continue
        mine = (part_idx[anchors_i] == p).nonzero()[:, 0]
        if mine.numel() == 0:
            continue
        key, valid = part.extra_positive(flat_idx[anchors_i[mine]])
        valid = valid.to(torch.bool)
        if not bool(valid.any()):
            continue
        rows = mine[valid]
        extra_loss[rows] = _info_nce(
            anchors[rows], F.normalize(key[valid].detach(), dim=1), keys,
            negative_mask[rows], cfg.temperature,
        )
        has_extra[rows] = True
    loss = torch.where(has_extra, 0.5 * (loss + extra_loss), loss)
    return loss.mean()
