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

All work is per sample or vectorised over anchors; nothing loops over pixels, and the Field
is evaluated at the anchors only, never on a whole slice or volume.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F

from joint.gate import RegistrationGate
from joint.memory_bank import MemoryBank
from joint.oracle import RegistrationOracle
from reg.field import points_inside
from seg.hooks import TrainerHook
from seg.losses import ExtraPositive
from seg.slices import SliceBatch, pixel_voxels
from seg.students import StudentOutput


def registration_positives(batch: SliceBatch, anchor_flat_index: torch.Tensor, oracle: RegistrationOracle,
                           bank: MemoryBank, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The registration positive of every anchor: ``(float32 (A, D) unit vectors, bool (A,) valid)``."""
    A, D = anchor_flat_index.shape[0], bank.embedding.shape[-1]
    b, voxels = pixel_voxels(batch, anchor_flat_index)
    anchor_pos, atlas_pos, moved = [], [], []
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
            anchor_pos.append(sel[torch.from_numpy(ok)])
            atlas_pos.append(bank.case_index([atlas_id]).expand(int(ok.sum())))
            moved.append(torch.from_numpy(there[ok]))
    vectors = torch.zeros((A, D))
    count = torch.zeros(A)
    if anchor_pos:
        where = torch.cat(anchor_pos)
        vec, valid = bank.lookup(torch.cat(atlas_pos), torch.cat(moved))
        vectors.index_add_(0, where, vec)
        count.index_add_(0, where, valid.float())
    valid = count > 0
    return F.normalize(vectors, dim=1) * valid[:, None].float(), valid


class RegistrationPositives(TrainerHook):
    """REPS as a trainer hook: one memory bank per student.

    :meth:`extra_positive` gives the pixel contrastive loss each anchor's registration
    positive; :meth:`after_step` refreshes the banks with the labeled samples' detached
    embeddings; the banks travel in checkpoints. :meth:`metrics` logs, per step, the share of
    the last batch's anchors that found a valid registration positive, so a run whose lookups
    all fail (silently plain ``cctr-rsl``) shows it. ``gate``: when given and it gates REPS
    (``gate.terms='rsl+reps'``), a student it closes gets no registration positive (:mod:`joint.gate`).
    """

    name = "reps"
    sees_whole_batch = True   # the banks must hold the same embeddings on every process

    def __init__(self, oracle: RegistrationOracle, banks: Mapping[str, MemoryBank],
                 gate: Optional[RegistrationGate] = None) -> None:
        self.oracle = oracle
        self.gate = gate
        self.banks = dict(banks)
        self._asked = 0
        self._valid = 0

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

        def positive(anchor_flat_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            vec, valid = registration_positives(batch, anchor_flat_index.cpu(), self.oracle, bank, step)
            unlabeled = ~batch.is_labeled[pixel_voxels(batch, anchor_flat_index)[0]]
            self._asked += int(unlabeled.sum())
            self._valid += int((valid & unlabeled).sum())
            return vec.to(anchor_flat_index.device), valid.to(anchor_flat_index.device)

        return positive

    def metrics(self) -> dict[str, float]:
        """``valid_fraction``: share of unlabeled-sample anchors with a registration positive
        since the last call; ``anchors``: how many were asked."""
        out = {"valid_fraction": self._valid / self._asked if self._asked else 0.0, "anchors": float(self._asked)}
        self._asked = self._valid = 0
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
