"""One step's registration guidance, computed once and read by every registration-guided term.

For every unlabeled sample of a batch: where in its volume each pixel was read (the sample's
``to_volume`` matrix, augmentation included), the atlas(es) the oracle's policy gives that
sample at this step, and for each atlas the pair's Field evaluated at those points: a point
Field of fixed shape ``(1, 1, H*W)`` into the atlas's native grid. RSL reads the atlas labels
through it (:mod:`joint.rsl`), the synthesised samples the atlas image and label
(:mod:`joint.synth`), REPS the points its anchors map to (:mod:`joint.reps`), so a step maps
each sample and asks for its atlases and Fields once, and the three terms see the same answer
by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from cctr.joint.oracle import RegistrationOracle
from cctr.reg.field import Field, points_inside
from cctr.seg.slices import SliceBatch, sample_voxels


@dataclass(frozen=True)
class SampleGuide:
    """The guidance of one unlabeled sample (batch row ``row``) of target volume ``case_id``.

    ``voxels``: float ``(H*W, 3)`` target voxel ``(z, y, x)`` of each pixel, row-major.
    ``on_target``: bool ``(H*W,)``, the pixels whose voxel lies inside the target volume.
    ``atlas_ids``: the atlas(es) the policy gives this sample at this step.
    ``fields``: per atlas, the pair's point Field ``(1, 1, H*W)`` into that atlas's native grid.
    """

    row: int
    case_id: str
    voxels: np.ndarray
    on_target: np.ndarray
    atlas_ids: tuple[str, ...]
    fields: tuple[Field, ...]

    def moved(self, k: int, pixels: np.ndarray) -> np.ndarray:
        """float32 ``(N, 3)``: atlas ``k``'s voxel that each of ``pixels`` (N,) maps to."""
        return self.fields[k].coords[:, 0, 0, pixels].T


class Guidance:
    """The guidance of the current step, for every registration-guided hook of a run.

    The first hook to ask in a step computes it; the others read the same object. A later step,
    or another batch, computes anew: a registration net trained alongside (:mod:`joint.coupled`)
    changes its Fields between steps.
    """

    def __init__(self, oracle: RegistrationOracle) -> None:
        self.oracle = oracle
        self._key: Optional[tuple[int, int]] = None
        self._guides: dict[int, SampleGuide] = {}

    def of_batch(self, step: int, batch: SliceBatch) -> dict[int, SampleGuide]:
        """Batch row -> its :class:`SampleGuide`, for every unlabeled row of ``batch``."""
        key = (int(step), id(batch))
        if key != self._key:
            rows = torch.nonzero(~batch.is_labeled, as_tuple=False).flatten().tolist()
            self._guides = {b: self._guide(step, batch, b) for b in rows}
            self._key = key
        return self._guides

    def _guide(self, step: int, batch: SliceBatch, b: int) -> SampleGuide:
        oracle = self.oracle
        case_id = batch.case_id[b]
        voxels = sample_voxels(batch, b).numpy()
        atlas_ids = oracle.atlases_for(case_id, step, int(batch.slice_index[b]))
        fields = tuple(oracle.points_field(case_id, atlas, voxels) for atlas in atlas_ids)
        on_target = points_inside(np.asarray(voxels, dtype=np.float64), oracle.case(case_id).shape)
        return SampleGuide(b, case_id, voxels, on_target, atlas_ids, fields)
