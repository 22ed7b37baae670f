"""Registration-Enhanced Positive Sampling (REPS, METHOD.md part 7).

For an anchor pixel on an UNLABELED sample, its registration positive a_p^r is the
embedding, in the memory bank of the same student, at the anatomically corresponding point
of a labeled volume:

    sample pixel (row, col) --to_volume--> unlabeled voxel (z, y, x)
        --CanonicalField.map_points--> labeled voxel (z', y', x') --bank--> embedding

The atlas is the one the oracle's policy gives for that sample at that step (the same one
RSL uses); under 'fused' the positives of all atlases are averaged (and re-normalised). An
anchor's positive is invalid when the anchor is on a labeled sample, falls outside its
volume, maps outside every atlas, or the bank holds nothing near the mapped point.

The atlas is labeled, so whether a positive can be right is known while training: the atlas
label at the mapped voxel is the anchor's class, or the registration (or the anchor's
pseudo-label) is wrong there. :class:`RepsConfig` ``positives`` says what to do with the others:
``all`` keeps them (the paper), ``label-agree`` drops them (METHOD.md part 7). The hook logs the
share that agree either way.

All work is per sample or vectorised over anchors; nothing loops over pixels, and the Field
is evaluated at the anchors only, never on a whole slice or volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cctr.joint.gate import RegistrationGate
from cctr.joint.memory_bank import MemoryBank
from cctr.joint.oracle import RegistrationOracle
from cctr.reg.field import points_inside
from cctr.seg.hooks import TrainerHook
from cctr.seg.losses import ExtraPositive
from cctr.seg.slices import SliceBatch, pixel_voxels
from cctr.seg.students import StudentOutput


# which registration positives count (METHOD.md part 7): every one found, or only those whose
# atlas label at the mapped voxel is the anchor's class
POSITIVE_RULES = ("all", "label-agree")


@dataclass(frozen=True)
class RepsConfig:
    """``positives``: which registration positives count, one of :data:`POSITIVE_RULES`."""

    positives: str = "all"

    def __post_init__(self) -> None:
        if self.positives not in POSITIVE_RULES:
            raise ValueError(f"reps.positives must be one of {POSITIVE_RULES}, got {self.positives!r}")


@dataclass(frozen=True)
class Positives:
    """The registration positives of a set of anchors.

    ``vectors``: float32 ``(A, D)`` unit vectors (zero where not valid); ``valid``: bool ``(A,)``,
    never set for an anchor on a labeled sample; ``asked``: the anchors on unlabeled samples;
    ``found``: (anchor, atlas) lookups the bank answered, before any label rule; ``agreeing``:
    how many of those land on an atlas voxel labeled with the anchor's class.
    """

    vectors: torch.Tensor
    valid: torch.Tensor
    asked: int
    found: int
    agreeing: int


def label_at(label_zyx: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """The labels ``(N,)`` of the voxels nearest to ``points_zyx`` (N, 3), voxel coordinates of
    ``label_zyx``'s grid inside the volume (:func:`reg.field.points_inside`)."""
    upper = np.asarray(label_zyx.shape) - 1
    zyx = np.clip(np.rint(points_zyx), 0, upper).astype(np.int64)
    return label_zyx[zyx[:, 0], zyx[:, 1], zyx[:, 2]]


def registration_positives(batch: SliceBatch, anchor_flat_index: torch.Tensor, anchor_class: torch.Tensor,
                           oracle: RegistrationOracle, bank: MemoryBank, step: int,
                           rule: str = "all") -> Positives:
    """The registration positive of every anchor (``anchor_class``: int64 ``(A,)``, the class it
    was drawn for); ``rule`` is one of :data:`POSITIVE_RULES`."""
    if rule not in POSITIVE_RULES:
        raise ValueError(f"REPS: unknown rule for positives {rule!r}; expected one of {POSITIVE_RULES}")
    A, D = anchor_flat_index.shape[0], bank.embedding.shape[-1]
    b, voxels = pixel_voxels(batch, anchor_flat_index)
    classes = anchor_class.cpu().numpy()
    asked = int((~batch.is_labeled[b]).sum())
    anchor_pos, atlas_pos, moved, agree = [], [], [], []
    for sample in torch.unique(b[~batch.is_labeled[b]]).tolist():
        sel = torch.nonzero(b == sample).flatten()
        target_id, z = batch.case_id[sample], int(batch.slice_index[sample])
        pts = voxels[sel].numpy()
        on_target = points_inside(pts, oracle.case(target_id).shape)
        sel, pts = sel[torch.from_numpy(on_target)], pts[on_target]
        if sel.numel() == 0:
            continue
        for atlas_id in oracle.atlases_for(target_id, step, z):
            field = oracle.field(target_id, atlas_id)
            there = field.map_points(pts)
            ok = points_inside(there, field.moving_shape)
            kept = sel[torch.from_numpy(ok)]
            anchor_pos.append(kept)
            atlas_pos.append(bank.case_index([atlas_id]).expand(kept.numel()))
            moved.append(torch.from_numpy(there[ok]))
            agree.append(torch.from_numpy(label_at(oracle.case(atlas_id).label, there[ok]) == classes[kept.numpy()]))
    vectors = torch.zeros((A, D))
    count = torch.zeros(A)
    found = agreeing = 0
    if anchor_pos:
        where = torch.cat(anchor_pos)
        vec, valid = bank.lookup(torch.cat(atlas_pos), torch.cat(moved))
        agrees = torch.cat(agree)
        found, agreeing = int(valid.sum()), int((valid & agrees).sum())
        if rule == "label-agree":
            valid = valid & agrees
            vec = vec * valid[:, None].to(vec.dtype)
        vectors.index_add_(0, where, vec)
        count.index_add_(0, where, valid.float())
    valid = count > 0
    return Positives(F.normalize(vectors, dim=1) * valid[:, None].float(), valid, asked, found, agreeing)


class RegistrationPositives(TrainerHook):
    """REPS as a trainer hook: one memory bank per student.

    :meth:`extra_positive` gives the pixel contrastive loss each anchor's registration
    positive; :meth:`after_step` refreshes the banks with the labeled samples' detached
    embeddings; the banks travel in checkpoints. :meth:`metrics` logs, per step, the share of
    the last batch's anchors that found a valid registration positive, so a run whose lookups
    all fail (silently plain ``cctr-rsl``) shows it, and the share of found positives whose
    atlas label is the anchor's class. ``cfg.positives`` says which positives count. ``gate``:
    when given and it gates REPS (``gate.terms='rsl+reps'``), a student it closes gets no
    registration positive (:mod:`joint.gate`).
    """

    name = "reps"
    sees_whole_batch = True   # the banks must hold the same embeddings on every process

    def __init__(self, oracle: RegistrationOracle, banks: Mapping[str, MemoryBank],
                 gate: Optional[RegistrationGate] = None, cfg: RepsConfig = RepsConfig()) -> None:
        self.oracle = oracle
        self.gate = gate
        self.cfg = cfg
        self.banks = dict(banks)
        self._asked = self._valid = self._found = self._agreeing = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by all banks."""
        return sum(bank.nbytes for bank in self.banks.values())

    def extra_positive(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput],
                       student: str) -> Optional[ExtraPositive]:
        """The extra positive of ``student`` for this batch; None for a student without a bank
        or one the gate has closed."""
        bank = self.banks.get(student)
        if bank is None or (self.gate is not None and not self.gate.is_open(student, self.name)):
            return None

        def positive(anchor_flat_index: torch.Tensor, anchor_class: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            found = registration_positives(batch, anchor_flat_index.cpu(), anchor_class, self.oracle, bank, step,
                                           self.cfg.positives)
            self._asked += found.asked
            self._valid += int(found.valid.sum())
            self._found += found.found
            self._agreeing += found.agreeing
            return found.vectors.to(anchor_flat_index.device), found.valid.to(anchor_flat_index.device)

        return positive

    def metrics(self) -> dict[str, float]:
        """Since the last call: ``valid_fraction``, the share of unlabeled-sample anchors with a
        registration positive (after ``cfg.positives``' rule); ``anchors``, how many were asked;
        ``label_agreement``, the share of the positives found (before the rule) whose atlas voxel
        is labeled with the anchor's class; left out when none was found, so that its curve and
        its means are over positives only."""
        out = {"valid_fraction": self._valid / self._asked if self._asked else 0.0, "anchors": float(self._asked)}
        if self._found:
            out["label_agreement"] = self._agreeing / self._found
        self._asked = self._valid = self._found = self._agreeing = 0
        return out

    def after_step(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput]) -> None:
        labeled = torch.nonzero(batch.is_labeled).flatten()
        if labeled.numel() == 0:
            return
        ids = [batch.case_id[i] for i in labeled.tolist()]
        for name, bank in self.banks.items():
            bank.update(ids, batch.slice_index[labeled], batch.to_volume[labeled],
                        outputs[name].embedding[labeled].detach())

    def state_dict(self) -> dict:
        return {name: bank.state_dict() for name, bank in self.banks.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        for name, bank in self.banks.items():
            bank.load_state_dict(state[name])
