"""The REPS memory bank (METHOD.md part 7): projector embeddings of the labeled volumes.

Every slice of every labeled case has one entry: the embedding map of the last training
sample cut from that slice, stored detached, pooled to ``1/downsample`` of the sample size
and in float16 so the bank's size is fixed up front (:attr:`MemoryBank.nbytes`), together
with the sample's ``to_volume`` matrix. A volume voxel ``(z, y, x)`` of a labeled case is
looked up by taking the nearest stored slice in z (within ``max_slice_gap`` slices),
mapping ``(y, x)`` back to that sample's pixels through the inverse of its ``to_volume``,
and interpolating the stored map bilinearly; the result is re-normalised to unit length.

Storage is one flat tensor over all slices of all cases, ``(S, h, w, D)``, so a lookup of
any number of points across cases is a single gather.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cctr.seg.options import option


@dataclass(frozen=True)
class BankConfig:
    downsample: int = option(4, "REPS bank: stored embedding maps are (H / downsample, W / downsample)")
    max_slice_gap: float = option(1.0, "REPS bank: farthest (in slices) a query may be from the slice it reads")

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.max_slice_gap < 0:
            raise ValueError(f"bank downsample must be >= 1 and max_slice_gap >= 0, got {self}")


class MemoryBank:
    """Embeddings of the slices of ``slices_per_case`` (case id -> number of slices Z).

    ``sample_hw``: the (H, W) of training samples; ``dim``: the embedding size D.
    """

    def __init__(self, slices_per_case: Mapping[str, int], dim: int, sample_hw: Sequence[int],
                 cfg: BankConfig = BankConfig()) -> None:
        if not slices_per_case:
            raise ValueError("memory bank: no labeled case to hold")
        self.cfg = cfg
        self.case_ids = tuple(slices_per_case)
        self._case_pos = {c: i for i, c in enumerate(self.case_ids)}
        counts = torch.tensor([int(slices_per_case[c]) for c in self.case_ids], dtype=torch.long)
        if (counts < 1).any():
            raise ValueError(f"memory bank: every case needs >= 1 slice, got {dict(slices_per_case)}")
        self.num_slices = counts                                            # (N,)
        self.offset = torch.cumsum(counts, 0) - counts                      # (N,) first row of each case
        self.sample_hw = (int(sample_hw[0]), int(sample_hw[1]))
        self.store_hw = tuple(max(1, -(-n // cfg.downsample)) for n in self.sample_hw)
        total = int(counts.sum())
        self.embedding = torch.zeros((total, *self.store_hw, int(dim)), dtype=torch.float16)  # (S, h, w, D)
        self.filled = torch.zeros(total, dtype=torch.bool)                  # (S,)
        self.from_volume = torch.zeros((total, 3, 3), dtype=torch.float32)  # (S, 3, 3) volume (y, x, 1) -> sample pixel
        self._nearest: torch.Tensor | None = None                          # (S,) nearest filled row, -1 if none

    @property
    def nbytes(self) -> int:
        """Bytes held by the bank's tensors (fixed at construction)."""
        return sum(t.numel() * t.element_size() for t in (self.embedding, self.filled, self.from_volume))

    def case_index(self, case_ids: Sequence[str]) -> torch.Tensor:
        """int64 ``(len(case_ids),)`` positions of the cases in the bank; unknown ids raise ValueError."""
        try:
            return torch.tensor([self._case_pos[c] for c in case_ids], dtype=torch.long)
        except KeyError as exc:
            raise ValueError(f"memory bank: case {exc.args[0]!r} is not a labeled case of the bank") from exc

    def update(self, case_ids: Sequence[str], slice_index: torch.Tensor, to_volume: torch.Tensor,
               embedding: torch.Tensor) -> None:
        """Store samples' embeddings ``(B, D, H, W)`` (any grad, any dtype; kept detached, float16).

        ``slice_index`` (B,) and ``to_volume`` (B, 3, 3) are the samples' own, as in a SliceBatch.
        """
        if len(case_ids) == 0:
            return
        if tuple(embedding.shape[-2:]) != self.sample_hw:
            raise ValueError(f"memory bank: embedding size {tuple(embedding.shape[-2:])} is not the sample size {self.sample_hw}")
        cases = self.case_index(case_ids)
        z = slice_index.detach().cpu().long()
        if ((z < 0) | (z >= self.num_slices[cases])).any():
            raise ValueError(f"memory bank: slice index out of range for cases {list(case_ids)}: {z.tolist()}")
        rows = self.offset[cases] + z
        # Two samples of one slice in a batch: keep the last, so its map and its matrix stay a
        # pair (indexed assignment with repeated indices keeps an unspecified one).
        keep = torch.tensor([i for i, r in enumerate(rows.tolist()) if r not in rows[i + 1:].tolist()], dtype=torch.long)
        rows = rows[keep]
        pooled = F.adaptive_avg_pool2d(embedding.detach()[keep.to(embedding.device)].float(), self.store_hw)
        self.embedding[rows] = pooled.permute(0, 2, 3, 1).to(torch.float16).cpu()
        self.from_volume[rows] = torch.linalg.inv(to_volume.detach().cpu().float()[keep])
        self.filled[rows] = True
        self._nearest = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embedding": self.embedding.clone(), "filled": self.filled.clone(), "from_volume": self.from_volume.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for key in ("embedding", "filled", "from_volume"):
            mine = getattr(self, key)
            if tuple(state[key].shape) != tuple(mine.shape):
                raise ValueError(f"memory bank: saved {key} has shape {tuple(state[key].shape)}, this bank {tuple(mine.shape)}")
            mine.copy_(state[key])
        self._nearest = None

    def _nearest_rows(self) -> torch.Tensor:
        """For every row, the filled row of the same case nearest in z (ties go down); -1 if none."""
        if self._nearest is None:
            nearest = torch.full_like(self.filled, -1, dtype=torch.long)
            for start, n in zip(self.offset.tolist(), self.num_slices.tolist()):
                filled_z = np.flatnonzero(self.filled[start:start + n].numpy())
                if filled_z.size == 0:
                    continue
                z = np.arange(n)
                right = np.clip(np.searchsorted(filled_z, z), 0, filled_z.size - 1)
                left = np.clip(right - 1, 0, filled_z.size - 1)
                pick = np.where(np.abs(filled_z[left] - z) <= np.abs(filled_z[right] - z), filled_z[left], filled_z[right])
                nearest[start:start + n] = torch.from_numpy(start + pick)
            self._nearest = nearest
        return self._nearest

    def lookup(self, case_index: torch.Tensor, points_zyx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings at volume voxels ``points_zyx`` (A, 3) of cases ``case_index`` (A,).

        Returns ``(float32 (A, D) unit vectors, bool (A,) valid)``. A point is invalid (its
        vector is 0) when it lies outside its volume, no stored slice is within
        ``max_slice_gap`` of it, or it falls outside the stored sample's field of view.
        """
        A, D = points_zyx.shape[0], self.embedding.shape[-1]
        if A == 0:
            return torch.zeros((0, D)), torch.zeros(0, dtype=torch.bool)
        pts = points_zyx.detach().cpu().float()
        case_index = case_index.cpu().long()
        n = self.num_slices[case_index]
        z = pts[:, 0]
        zi = torch.round(z).clamp(min=0).long()
        zi = torch.minimum(zi, n - 1)
        row = self._nearest_rows()[self.offset[case_index] + zi]             # (A,)
        valid = (row >= 0) & (z >= -0.5) & (z <= n.float() - 0.5)
        row = row.clamp(min=0)
        stored_z = (row - self.offset[case_index]).float()
        valid &= (stored_z - z).abs() <= self.cfg.max_slice_gap

        yx1 = torch.stack([pts[:, 1], pts[:, 2], torch.ones(A)], dim=1)     # (A, 3) volume (y, x, 1)
        pix = torch.einsum("aij,aj->ai", self.from_volume[row], yx1)[:, :2]  # (A, 2) sample (row, col)
        H, W = self.sample_hw
        valid &= (pix[:, 0] >= -0.5) & (pix[:, 0] <= H - 0.5) & (pix[:, 1] >= -0.5) & (pix[:, 1] <= W - 0.5)

        h, w = self.store_hw
        # Stored cell i averages sample pixels [i*H/h, (i+1)*H/h): its centre is (i + 0.5) H/h - 0.5.
        gi = ((pix[:, 0] + 0.5) * h / H - 0.5).clamp(0, h - 1)
        gj = ((pix[:, 1] + 0.5) * w / W - 0.5).clamp(0, w - 1)
        i0, j0 = gi.floor().long(), gj.floor().long()
        i1, j1 = (i0 + 1).clamp(max=h - 1), (j0 + 1).clamp(max=w - 1)
        fi, fj = (gi - i0.float())[:, None], (gj - j0.float())[:, None]
        flat = self.embedding.view(-1, D)  # (S*h*w, D): index_select is far faster than 3-index gathers

        def at(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            return flat.index_select(0, (row * h + i) * w + j).float()

        vec = (1 - fi) * (1 - fj) * at(i0, j0) + (1 - fi) * fj * at(i0, j1) + fi * (1 - fj) * at(i1, j0) + fi * fj * at(i1, j1)
        vec = F.normalize(vec, dim=1) * valid[:, None].float()
        return vec, valid
