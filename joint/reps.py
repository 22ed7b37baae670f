"""Registration-Enhanced Positive Sampling (REPS, METHOD.md part 7).

For an anchor pixel on an UNLABELED sample, its registration positive a_p^r is the
embedding, in the memory bank of the same student, at the anatomically corresponding point
of a labeled volume:

    sample pixel (row, col) --to_volume--> unlabeled voxel (z, y, x)
        --CanonicalField.map_points--> labeled voxel (z', y', x') --bank--> embedding

The atlas and the mapped point come from the step's :class:`joint.guidance.Guidance` (the
atlas RSL uses, through the same Field); under 'fused' the positives of all atlases are
averaged (and re-normalised). An anchor's positive is invalid when the anchor is on a labeled
sample, falls outside its volume, maps outside every atlas, or the bank holds nothing near the
mapped point.

The atlas is labeled, so whether a positive can be right is known while training: the atlas
label at the mapped voxel is the anchor's class, or the registration (or the anchor's
pseudo-label) is wrong there. The hook logs the share that agree (``reps/label_agreement``);
every positive found counts, as in the paper (dropping the others lost, docs/RESULTS.md).

All work is per sample or vectorised over anchors; nothing loops over pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cctr.joint.guidance import Guidance
from cctr.joint.memory_bank import MemoryBank
from cctr.reg.field import points_inside
from cctr.seg.hooks import TrainerHook
from cctr.seg.losses import ExtraKeys, PartAnchors
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentOutput


@dataclass(frozen=True)
class Positives:
    """The registration positives of a set of anchors.

    ``vectors``: float32 ``(A, D)`` unit vectors (zero where not valid); ``valid``: bool ``(A,)``,
    never set for an anchor on a labeled sample; ``asked``: the anchors on unlabeled samples;
    ``found``: (anchor, atlas) lookups the bank answered; ``agreeing``:
    how many of those land on an atlas voxel labeled with the anchor's class.
    """

    vectors: torch.Tensor
    valid: torch.Tensor
    asked: int
    found: int
    agreeing: int


def label_at(label_zyx: np.ndarray, points_zyx: np.ndarray) -> np.ndarray:
    """The labels of the voxels nearest to some points.

    Parameters
    ----------
    label_zyx : numpy.ndarray
        Integer ``(Z, Y, X)`` label volume.
    points_zyx : numpy.ndarray
        ``(N, 3)`` voxel coordinates ``(z, y, x)`` of ``label_zyx``'s grid, inside the volume
        (:func:`reg.field.points_inside`).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` labels, of ``label_zyx``'s dtype.
    """
    upper = np.asarray(label_zyx.shape) - 1
    zyx = np.clip(np.rint(points_zyx), 0, upper).astype(np.int64)
    return label_zyx[zyx[:, 0], zyx[:, 1], zyx[:, 2]]


def registration_positives(batch: SliceBatch, anchors: PartAnchors, guidance: Guidance, bank: MemoryBank,
                           step: int) -> Positives:
    """The registration positive of every anchor of one student.

    Parameters
    ----------
    batch : SliceBatch
        Samples ``(B, 1, H, W)``.
    anchors : PartAnchors
        ``flat_index (A,)`` into the student's ``B*H*W`` pixels and the class each was drawn for.
    guidance : Guidance
        The step's registration guidance.
    bank : MemoryBank
        That student's bank of labeled-volume embeddings ``D``.
    step : int
        The training step (it picks the atlases).

    Returns
    -------
    Positives
        ``vectors (A, D)`` unit (zero where not valid), ``valid (A,)`` and the counts.
    """
    H, W = batch.image.shape[-2:]
    flat = anchors.flat_index.detach().cpu().long()
    A, D = flat.shape[0], bank.embedding.shape[-1]
    rows, pixels = flat // (H * W), (flat % (H * W)).numpy()
    classes = anchors.classes.cpu().numpy()
    asked = int((~batch.is_labeled[rows]).sum())
    guides = guidance.of_batch(step, batch) if asked else {}
    anchor_pos, atlas_pos, moved, agree = [], [], [], []
    for sample in torch.unique(rows[~batch.is_labeled[rows]]).tolist():
        guide = guides[sample]
        sel = torch.nonzero(rows == sample).flatten()
        sel = sel[torch.from_numpy(guide.on_target[pixels[sel.numpy()]])]
        if sel.numel() == 0:
            continue
        for k, atlas_id in enumerate(guide.atlas_ids):
            there = guide.moved(k, pixels[sel.numpy()])
            ok = points_inside(there, guide.fields[k].moving_shape)
            kept = sel[torch.from_numpy(ok)]
            anchor_pos.append(kept)
            atlas_pos.append(bank.case_index([atlas_id]).expand(kept.numel()))
            moved.append(torch.from_numpy(there[ok]))
            atlas_label = guidance.oracle.atlases[atlas_id].label
            agree.append(torch.from_numpy(label_at(atlas_label, there[ok]) == classes[kept.numpy()]))
    vectors = torch.zeros((A, D))
    count = torch.zeros(A)
    found = agreeing = 0
    if anchor_pos:
        where = torch.cat(anchor_pos)
        vec, valid = bank.lookup(torch.cat(atlas_pos), torch.cat(moved))
        found, agreeing = int(valid.sum()), int((valid & torch.cat(agree)).sum())
        vectors.index_add_(0, where, vec)
        count.index_add_(0, where, valid.float())
    valid = count > 0
    return Positives(F.normalize(vectors, dim=1) * valid[:, None].float(), valid, asked, found, agreeing)


class RegistrationPositives(TrainerHook):
    """REPS as a trainer hook: one memory bank per student.

    :meth:`extra_positive` gives the pixel contrastive loss each anchor's registration
    positive; :meth:`after_step` refreshes the banks with the labeled samples' detached
    embeddings; the banks travel in checkpoints. :meth:`metrics` logs, per step, the share of
    the anchors on unlabeled samples that found a valid registration positive, so a run whose
    lookups all fail (silently plain ``cctr-rsl``) shows it, and the share of found positives
    whose atlas label is the anchor's class.

    Parameters
    ----------
    guidance : Guidance
        The run's registration guidance, shared with the other registration-guided hooks.
    banks : mapping of str to MemoryBank
        Student name -> that student's bank; a student without one gets no positives.
    """

    name = "reps"
    sees_whole_batch = True   # the banks must hold the same embeddings on every process

    def __init__(self, guidance: Guidance, banks: Mapping[str, MemoryBank]) -> None:
        self.guidance = guidance
        self.banks = dict(banks)
        self._found: list[Positives] = []

    @property
    def nbytes(self) -> int:
        """Bytes held by all banks."""
        return sum(bank.nbytes for bank in self.banks.values())

    def extra_positive(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput], student: str,
                       anchors: PartAnchors) -> Optional[ExtraKeys]:
        """The registration positives of ``student``'s anchors (:func:`registration_positives`).

        Parameters
        ----------
        step : int
            The training step.
        batch : SliceBatch
            The step's samples ``(B, 1, H, W)``, on the CPU.
        outputs : mapping of str to StudentOutput
            The students' outputs (not read).
        student : str
            Whose anchors these are.
        anchors : PartAnchors
            ``flat_index (A,)`` into the student's ``B*H*W`` pixels and the class each was drawn for.

        Returns
        -------
        ExtraKeys or None
            ``vectors`` float32 ``(A, D)`` unit (zero where not valid) and ``valid`` bool ``(A,)``,
            on the anchors' device; None for a student without a bank.
        """
        bank = self.banks.get(student)
        if bank is None:
            return None
        found = registration_positives(batch, anchors, self.guidance, bank, step)
        self._found.append(found)
        device = anchors.flat_index.device
        return ExtraKeys(found.vectors.to(device), found.valid.to(device))

    def metrics(self) -> dict[str, float]:
        """Figures of the positives looked up since the last call, which it resets.

        Returns
        -------
        dict of str to float
            ``valid_fraction``, the share of unlabeled-sample anchors with a registration
            positive; ``anchors``, how many were asked; ``label_agreement``, the share of the
            positives found whose atlas voxel is labeled with the anchor's class (left out when
            none was found, so that its curve and its means are over positives only).
        """
        asked = sum(p.asked for p in self._found)
        valid = sum(int(p.valid.sum()) for p in self._found)
        found = sum(p.found for p in self._found)
        out = {"valid_fraction": valid / asked if asked else 0.0, "anchors": float(asked)}
        if found:
            out["label_agreement"] = sum(p.agreeing for p in self._found) / found
        self._found = []
        return out

    def after_step(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput]) -> None:
        """Refresh every bank with its student's embeddings of the batch's labeled samples.

        Parameters
        ----------
        step : int
            The training step (not read).
        batch : SliceBatch
            The step's samples (the whole global batch under torchrun), on the CPU; their
            ``slice_index (B,)`` and ``to_volume (B, 3, 3)`` place each sample in its volume.
        outputs : mapping of str to StudentOutput
            Student name -> its detached outputs, embedding ``(B, D, H, W)``.
        """
        labeled = torch.nonzero(batch.is_labeled).flatten()
        if labeled.numel() == 0:
            return
        ids = [batch.case_id[i] for i in labeled.tolist()]
        for name, bank in self.banks.items():
            bank.update(ids, batch.slice_index[labeled], batch.to_volume[labeled],
                        outputs[name].embedding[labeled].detach())

    def state_dict(self) -> dict:
        """Student name -> that bank's ``state_dict()``."""
        return {name: bank.state_dict() for name, bank in self.banks.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Restore every bank from :meth:`state_dict`'s output.

        Parameters
        ----------
        state : mapping of str to mapping of str to torch.Tensor
            Student name -> bank state, one for every student with a bank.

        Raises
        ------
        KeyError
            When a student with a bank is missing from ``state``.
        ValueError
            When a saved tensor's shape differs from the bank's.
        """
        for name, bank in self.banks.items():
            bank.load_state_dict(state[name])
