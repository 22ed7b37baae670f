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

# extra_positive(anchor_flat_index (A,), anchor_class (A,)) -> (key (A, D), valid (A,)); the flat
# index is into B*H*W of ONE student's embedding of the joint (labeled + unlabeled) batch, the class
# is the one the anchor was drawn for (its label or pseudo-label), int64
ExtraPositive = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


# where an unlabeled pixel's class and confidence in the contrastive pool come from
# (seg/objective.py: contrast_pool): the other student, the student itself, or both agreeing
PSEUDO_SOURCES = ("teacher", "own", "agree")
# how an anchor's registration positive joins its class-mean positive (METHOD.md part 7)
EXTRA_POSITIVE_MODES = ("mean-of-two", "multi-positive", "averaged-key")


@dataclass(frozen=True)
class ContrastConfig:
    """Anchor sampling of the pixel contrastive loss. The paper gives N = 1000 and O = 500 without
    code; this project reads N as anchors per class and O as negative keys drawn per class
    (each anchor contrasts against the O keys of every other class), temperature 0.1.

    ``pseudo_source`` (one of PSEUDO_SOURCES) picks the pseudo-label of unlabeled pixels;
    ``extra_positive_mode`` (one of EXTRA_POSITIVE_MODES) how a second positive is scored:
    ``'mean-of-two'`` averages two InfoNCE terms (one per positive), ``'multi-positive'`` is one
    InfoNCE with both positives in the denominator (SupCon's L_out: the mean over positives of
    ``-log(e^{a.p/t} / (sum_P e^{a.p'/t} + sum_N e^{a.n/t}))``), ``'averaged-key'`` one InfoNCE
    against the renormalised mean of the two keys."""

    anchors_per_class: int = 1000
    negatives_per_class: int = 500
    temperature: float = 0.1
    confidence: float = 0.8   # an unlabeled pixel may be an anchor when its top-1 probability is at least this
    pseudo_source: str = "teacher"
    extra_positive_mode: str = "mean-of-two"

    def __post_init__(self) -> None:
        if self.pseudo_source not in PSEUDO_SOURCES:
            raise ValueError(f"contrast.pseudo_source must be one of {PSEUDO_SOURCES}, got {self.pseudo_source!r}")
        if self.extra_positive_mode not in EXTRA_POSITIVE_MODES:
            raise ValueError(f"contrast.extra_positive_mode must be one of {EXTRA_POSITIVE_MODES}, "
                             f"got {self.extra_positive_mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"contrast.temperature must be > 0, got {self.temperature}")


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


def _info_nce_two_positives(anchor: torch.Tensor, first: torch.Tensor, second: torch.Tensor, negatives: torch.Tensor,
                            negative_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-anchor multi-positive InfoNCE (SupCon L_out) of two positives ``(A, D)`` each:
    ``logsumexp(both positives and the negatives) - mean of the two positive logits``. Returns ``(A,)``."""
    pos = torch.stack([(anchor * first).sum(dim=1), (anchor * second).sum(dim=1)], dim=1) / temperature  # (A, 2)
    neg = ((anchor @ negatives.T) / temperature).masked_fill(~negative_mask, float("-inf"))            # (A, K)
    return torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos.mean(dim=1)


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
    per anchor where valid; such anchors combine both positives as ``cfg.extra_positive_mode``
    says (default: the mean of the two InfoNCE terms). Keys carry no
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
    positive = centres[centre_of]                                                 # (A, D)
    loss = _info_nce(anchors, positive, keys, negative_mask, cfg.temperature)

    extra_loss = torch.zeros_like(loss)
    has_extra = torch.zeros_like(loss, dtype=torch.bool)
    for p, part in enumerate(parts):
        if part.extra_positive is None:
            continue
        mine = (part_idx[anchors_i] == p).nonzero()[:, 0]
        if mine.numel() == 0:
            continue
        key, valid = part.extra_positive(flat_idx[anchors_i[mine]], anchor_cls[mine])
        valid = valid.to(torch.bool)
        if not bool(valid.any()):
            continue
        rows = mine[valid]
        extra_loss[rows] = _with_extra_positive(anchors[rows], positive[rows], F.normalize(key[valid].detach(), dim=1),
                                                keys, negative_mask[rows], cfg)
        has_extra[rows] = True
    if cfg.extra_positive_mode == "mean-of-two":
        loss = torch.where(has_extra, 0.5 * (loss + extra_loss), loss)
    else:
        loss = torch.where(has_extra, extra_loss, loss)
    return loss.mean()


def _with_extra_positive(anchor: torch.Tensor, centre: torch.Tensor, extra: torch.Tensor, keys: torch.Tensor,
                         negative_mask: torch.Tensor, cfg: ContrastConfig) -> torch.Tensor:
    """Per-anchor ``(A,)`` loss term of anchors that have a registration positive ``extra``
    (A, D), beside their class mean ``centre`` (A, D). For ``'mean-of-two'`` it is the second
    InfoNCE term only (the caller averages it with the first); for the other modes the whole loss."""
    if cfg.extra_positive_mode == "mean-of-two":
        return _info_nce(anchor, extra, keys, negative_mask, cfg.temperature)
    if cfg.extra_positive_mode == "multi-positive":
        return _info_nce_two_positives(anchor, centre, extra, keys, negative_mask, cfg.temperature)
    return _info_nce(anchor, F.normalize(centre + extra, dim=1), keys, negative_mask, cfg.temperature)
