"""Coupled training (METHOD.md part 9, method ``cctr-coupled``): the registration net keeps
learning while the students train, and the students teach it.

The hook :class:`CoupledRegistration` owns

- the registration net being fine-tuned (loaded from the run's ``learned:CKPT`` backend), its
  Adam optimiser and its schedule: one registration step every ``coupled.every`` segmentation
  steps once the first sixth of the run has passed (the students' labels mean little before);
- a SERVED copy of that net, the one RSL and REPS read through the oracle
  (:func:`reg.backends.live_backend`), its Fields refined per pair as the backend spec says
  (``learned:CKPT`` refines by default, as in ``cctr``; ``?refine=0`` serves the net alone):
  every ``coupled.refresh_every`` steps (when the net has changed) the served copy takes the
  trained weights, the oracle drops its Fields and recomputes, batched, every pair the atlas
  policy can ask for. A checkpoint holds both nets, and a resumed run recomputes its Fields in
  the same calls, so it serves exactly the Fields an uninterrupted one did;
- :class:`PseudoLabels`, the students' word on the unlabeled training volumes: after every
  step, each unlabeled sample's two softmax maps are carried back onto its volume's native
  slice (the inverse of the sample's ``to_volume``); a voxel is kept where both students agree
  and both are at least 0.9 sure (detached: nothing flows back);
- the registration loss (:class:`reg.losses.RegistrationLoss`, the checkpoint's own) on a batch
  of two (fixed, moving) training pairs on the canonical grid ``(B, 1, Z, Y, X)``: image
  similarity + smoothness + soft Dice of the warped moving label against the fixed label, the
  truth where both volumes are labeled (the ED/ES frames of a labeled patient), the students'
  labels elsewhere, masked to the voxels both sides trust;
- a mid-run phase: ``coupled.mid_phase * iterations`` registration steps in one go halfway
  through, on the students' labels of that moment, then served: the second half of the run
  learns from a net the first half taught;
- the closing phase: after the last segmentation step, ``coupled.final_phase * iterations``
  more registration steps on the students' final labels (the best teachers the run has),
  before the last validation and checkpoint; they add to the run's time, not to any step's.
  Both phases scale with the run, so a short run is short;
- its files: ``RUN/reg/last.pt`` (and ``RUN/reg/best.pt``, the net at the students' best
  validation step) in the format of :mod:`reg.checkpoint`, so ``learned:RUN/reg/last.pt``
  loads it like any pretrained net;
- diagnostics at every validation: pair Dice of warped atlas labels on the validation
  volumes, of validation volumes onto each other, and (logging only) of the served Fields
  against hidden labels of unlabeled volumes where the dataset keeps them
  (``TrainData.diagnostic_labels``, never used for training).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from cctr.joint.oracle import RegistrationOracle
from cctr.reg.backends import Backend, check_device, live_backend
from cctr.reg.checkpoint import load_model, save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.jacobian import regularity
from cctr.reg.losses import RegistrationLoss
from cctr.reg.model import RegistrationNet
from cctr.reg.refine import RefineConfig, refine_displacement
from cctr.reg.spec import BackendSpec
from cctr.reg.placement import Placed, field_of, place_pair, place_volume
from cctr.reg.train import mean_foreground_dice
from cctr.seg.data.case import Case
from cctr.seg.distributed import world_from_environment
from cctr.seg.hooks import TrainerHook
from cctr.seg.options import option
from cctr.seg.progress import Progress
from cctr.seg.slices import SliceBatch, resample_slice
from cctr.seg.students import StudentOutput


# Fixed parts of the schedule and loss: each was either never varied or varied without a
# difference on validation (docs/RESULTS.md, option table).
WARMUP_FRACTION = 1 / 6     # share of the run before the first registration step
MID_AT = 0.5                # where the mid-run phase falls, as a share of the run
PAIRS = 2                   # (fixed, moving) pairs per registration step
CONFIDENCE = 0.9            # both students' top probability must reach this for a voxel to teach
LABELED_FRACTION = 0.25     # share of pairs of two labeled volumes (when there are two)
ATLAS_FRACTION = 0.5        # other pairs: share whose moving volume is an atlas (RSL's pairs)
VAL_PAIRS = 8               # pairs per validation diagnostic


@dataclass(frozen=True)
class CoupledConfig:
    """Coupled-training options; nested as ``coupled.*`` in :class:`joint.config.JointConfig`."""

    # 8 rather than 4 held validation Dice on both phantoms for a cheaper step (docs/RESULTS.md)
    every: int = option(8, "segmentation steps per registration step")
    lr: float = option(1e-3, "Adam learning rate of the registration net (constant)")
    refresh_every: int = option(50, "segmentation steps between refreshes of the Fields RSL and REPS read")
    # at 600 iterations: 798 and 1602 steps (800 mid-run steps won on validation on both phantoms)
    mid_phase: float = option(1.33, "registration steps of the mid-run phase, per segmentation step of the run")
    final_phase: float = option(2.67, "registration steps of the closing phase, per segmentation step of the run")

    def __post_init__(self) -> None:
        if min(self.every, self.refresh_every) < 1 or min(self.mid_phase, self.final_phase) < 0:
            raise ValueError("coupled: every and refresh_every must be >= 1, mid_phase and final_phase >= 0")
        if not self.lr > 0:
            raise ValueError("coupled: lr must be > 0")


class PseudoLabels:
    """The students' agreed, confident labels of volumes, on each volume's NATIVE grid.

    Per volume: ``label`` uint8 (Z, Y, X), the argmax of the two students' mean softmax, and
    ``mask`` bool (Z, Y, X), True where both students agreed and were both sure, as of the
    last sample that covered the voxel (never-seen voxels stay False).
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]]) -> None:
        self.label = {cid: torch.zeros(tuple(s), dtype=torch.uint8) for cid, s in shapes.items()}
        self.mask = {cid: torch.zeros(tuple(s), dtype=torch.bool) for cid, s in shapes.items()}

    def update(self, case_id: str, z: int, to_volume: torch.Tensor, probs_a: torch.Tensor, probs_b: torch.Tensor,
               confidence: float) -> None:
        """Write one sample: softmax maps (C, H, W) of both students, sample -> slice ``z`` by
        the 3x3 ``to_volume`` (sample (row, col, 1) -> voxel (y, x, 1))."""
        C = probs_a.shape[0]
        (top_a, class_a), (top_b, class_b) = probs_a.max(dim=0), probs_b.max(dim=0)   # first index on ties, as argmax
        keep = (class_a == class_b) & (torch.minimum(top_a, top_b) >= confidence)
        ones = torch.ones_like(keep, dtype=torch.float32)
        planes = torch.cat([0.5 * (probs_a + probs_b), keep[None].float(), ones[None]])  # (C + 2, H, W)
        # voxel (y, x, 1) -> sample (row, col, 1): the same bilinear resampler, run backwards
        to_sample = torch.linalg.inv(to_volume.to(torch.float64))
        Y, X = self.label[case_id].shape[1:]
        back = resample_slice(planes[:, None], 0, to_sample, (Y, X), "linear")  # (C + 2, Y, X)
        covered = back[C + 1] > 0.999  # every bilinear neighbour lies on the sample
        self.label[case_id][z][covered] = back[:C].argmax(dim=0).to(torch.uint8)[covered]
        self.mask[case_id][z][covered] = (back[C] > 0.5)[covered]

    def coverage(self) -> float:
        """Share of all voxels currently trusted."""
        total = sum(m.numel() for m in self.mask.values())
        return float(sum(int(m.sum()) for m in self.mask.values()) / max(total, 1))

    def state_dict(self) -> dict:
        return {cid: {"label": self.label[cid].clone(), "mask": self.mask[cid].clone()} for cid in self.label}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state) != set(self.label):   # labels of other volumes would be read as these
            raise KeyError(f"saved labels of volumes {sorted(set(state) ^ set(self.label))} do not match these")
        for cid in self.label:
            self.label[cid] = state[cid]["label"].clone()
            self.mask[cid] = state[cid]["mask"].clone()


@dataclass(frozen=True)
class RegVolume:
    """A training volume the registration loss can use: placed on the canonical grid once."""

    case: Case
    placed: Placed
    labeled: bool  # truth (labeled set) or the students' pseudo labels


_PHASES = {"final": "closing phase", "mid": "mid-run phase"}   # CoupledRegistration.finish: name -> progress label


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.detach().float().cpu().softmax(dim=1)


class CoupledRegistration(TrainerHook):
    """The registration net trained alongside the students; see the module docstring."""

    name = "regnet"
    sees_whole_batch = True   # the registration net must take the same steps on every process

    def __init__(self, net: RegistrationNet, reg_config: RegConfig, cfg: CoupledConfig, labeled: Sequence[Case],
                 unlabeled: Sequence[Case], val: Sequence[Case], num_classes: int, seed: int = 0,
                 device: torch.device = torch.device("cpu"),
                 diagnostic_labels: Optional[Mapping[str, np.ndarray]] = None, iterations: int = 0,
                 refine: RefineConfig = RefineConfig(steps=0), spec: Optional[BackendSpec] = None) -> None:
        self.cfg = cfg
        self.refine = refine     # test-time refinement of every served Field (steps 0: the net alone)
        self.iterations = int(iterations)  # the students' last step, after which the closing phase runs (0: none)
        self.reg_config = reg_config
        self.num_classes = int(num_classes)
        self.device = device
        self.net = net.to(device).train()
        self.served = copy.deepcopy(net).to(device).eval()
        for p in self.served.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng([int(seed), 12])  # its own stream: the trainer's draws stay as in cctr
        grid = reg_config.grid
        self.labeled = [RegVolume(c, place_volume(c.image, c.spacing, grid), True) for c in labeled]
        self.unlabeled = [RegVolume(c, place_volume(c.image, c.spacing, grid), False) for c in unlabeled]
        self.val = [RegVolume(c, place_volume(c.image, c.spacing, grid), True) for c in val if c.label is not None]
        self.pseudo = PseudoLabels({v.case.case_id: v.case.shape for v in self.unlabeled})
        self.diagnostic_labels = dict(diagnostic_labels or {})
        self.loss = RegistrationLoss(reg_config.loss)
        self.oracle: Optional[RegistrationOracle] = None
        self.reg_steps = 0       # registration steps taken
        self.served_steps = 0    # registration steps the served copy has seen
        self._metrics: dict[str, float] = {}
        self._last_val_dice = -1.0  # atlas_dice of the latest validation (-1: none yet)
        self.backend: Backend = live_backend(self.served, reg_config, device, refine, spec)

    @classmethod
    def from_spec(cls, spec: BackendSpec, cfg: CoupledConfig, labeled: Sequence[Case], unlabeled: Sequence[Case],
                  val: Sequence[Case], num_classes: int, seed: int = 0, device: str = "cpu",
                  diagnostic_labels: Optional[Mapping[str, np.ndarray]] = None,
                  iterations: int = 0) -> "CoupledRegistration":
        """The hook over the net of a learned backend spec: the net it trains is the checkpoint's,
        the Fields it serves are refined as the spec says (as ``cctr`` would refine that
        checkpoint's; ``refine=0``: the net alone)."""
        if not spec.is_learned:
            raise ValueError(f"cctr-coupled fine-tunes a learned registration net; give --reg-backend learned:CKPT, got {spec}")
        net, reg_config = load_model(Path(spec.checkpoint))  # type: ignore[arg-type]
        return cls(net, reg_config, cfg, labeled, unlabeled, val, num_classes, seed, check_device(device),
                   diagnostic_labels, iterations, spec.refine, spec)

    def bind(self, oracle: RegistrationOracle) -> None:
        """The oracle serving Fields of :attr:`backend`: told whenever the served net changes."""
        if oracle.backend is not self.backend:
            raise ValueError("the coupled hook must be bound to the oracle built over its own live backend")
        self.oracle = oracle

    # -- the students teach: pseudo labels -------------------------------------------------------
    def _remember(self, batch: SliceBatch, outputs: Mapping[str, StudentOutput]) -> None:
        if "a" not in outputs or "b" not in outputs:
            return
        unlabeled = torch.nonzero(~batch.is_labeled).flatten()
        if unlabeled.numel() == 0:
            return
        pa, pb = _probs(outputs["a"].logits[unlabeled]), _probs(outputs["b"].logits[unlabeled])
        for k, b in enumerate(unlabeled.tolist()):
            cid = batch.case_id[b]
            if cid in self.pseudo.label:
                self.pseudo.update(cid, int(batch.slice_index[b]), batch.to_volume[b], pa[k], pb[k], CONFIDENCE)

    # -- registration step ------------------------------------------------------------------------
    def _draw_pair(self) -> tuple[RegVolume, RegVolume]:
        """(fixed, moving): two labeled volumes with probability ``LABELED_FRACTION``; else an
        unlabeled fixed volume and an atlas (``ATLAS_FRACTION``) or another patient's volume."""
        rng, labeled, unlabeled = self.rng, self.labeled, self.unlabeled
        if len(labeled) >= 2 and (not unlabeled or rng.random() < LABELED_FRACTION):
            i, j = rng.choice(len(labeled), size=2, replace=False)
            return labeled[int(i)], labeled[int(j)]
        fixed = unlabeled[int(rng.integers(len(unlabeled)))]
        others = [v for v in unlabeled if v.case.patient_id != fixed.case.patient_id]
        if rng.random() < ATLAS_FRACTION or not others:
            return fixed, labeled[int(rng.integers(len(labeled)))]
        return fixed, others[int(rng.integers(len(others)))]

    def _canonical_labels(self, volume: RegVolume, placed: Placed) -> tuple[np.ndarray, np.ndarray]:
        """The volume's labels on ``placed``'s canonical grid: soft one-hot (C, Zc, Yc, Xc) and
        the trust weight (Zc, Yc, Xc): 1 inside the volume for truth, the pseudo mask otherwise."""
        if volume.labeled:
            onehot = placed.canonical_onehot(volume.case.label, self.num_classes)
            return onehot, onehot.sum(axis=0)
        cid = volume.case.case_id
        onehot = placed.canonical_onehot(self.pseudo.label[cid].numpy(), self.num_classes)
        trust = placed.canonical_onehot(self.pseudo.mask[cid].numpy().astype(np.uint8), 2)[1]
        return onehot, trust

    def _registration_step(self) -> None:
        fixed_img, moving_img, label_maps = [], [], []
        for _ in range(PAIRS):
            fixed, moving = self._draw_pair()
            moved = place_pair(fixed.placed, moving.placed, self.reg_config.grid, self.reg_config.prealign)
            f_oh, f_w = self._canonical_labels(fixed, fixed.placed)
            m_oh, m_w = self._canonical_labels(moving, moved)
            fixed_img.append(fixed.placed.image)
            moving_img.append(moved.image)
            label_maps.append((f_oh, f_w, np.concatenate([m_oh, m_w[None]])))
        fixed_t = torch.from_numpy(np.stack(fixed_img))[:, None].to(self.device)
        moving_t = torch.from_numpy(np.stack(moving_img))[:, None].to(self.device)
        self.net.train()
        disp, warped = self.net(fixed_t, moving_t)
        sim, smooth, loss = self.loss(warped, fixed_t, disp)
        dice_terms = []
        for i, (f_oh, f_w, m_maps) in enumerate(label_maps):
            m_warped = self.net.warp(torch.from_numpy(m_maps)[None].to(self.device), disp[i:i + 1])
            trust = torch.from_numpy(f_w).to(self.device)[None, None] * m_warped[:, -1:]  # both sides trusted
            if float(trust.detach().sum()) < 1.0:
                continue  # the students have not covered this volume yet
            target = torch.from_numpy(f_oh).to(self.device)[None]
            term = self.loss.dice(m_warped[:, :-1] * trust, target * trust)
            dice_terms.append(float(term.detach()))
            loss = loss + term / PAIRS
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.reg_steps += 1
        self._metrics = {"loss": float(loss.detach()), "similarity": float(sim.detach()),
                         "smoothness": float(smooth.detach()), "steps": float(self.reg_steps),
                         "pseudo_coverage": self.pseudo.coverage()}
        if dice_terms:
            self._metrics["dice_loss"] = float(np.mean(dice_terms))

    def _refresh(self) -> None:
        """Serve the trained weights: RSL and REPS read Fields of the current net from now on."""
        self.served.load_state_dict(self.net.state_dict())
        self.served_steps = self.reg_steps
        self._recompute()

    def _recompute(self) -> None:
        """Drop the oracle's Fields of the served net's earlier weights and compute every pair
        the policy can ask for now, batched, in the oracle's order and calls (the same in a
        resumed run, so the same Fields to the last bit)."""
        if self.oracle is None:
            return
        self.oracle.invalidate()
        self.oracle.warm(progress=False)

    def after_step(self, step: int, batch: SliceBatch, outputs: Mapping[str, StudentOutput]) -> None:
        done = step + 1
        self._remember(batch, outputs)
        if done > self.warmup_steps and (done - self.warmup_steps) % self.cfg.every == 0:
            self._registration_step()
        if done == self.iterations and self.final_steps:
            self.finish(self.final_steps)
            self._refresh()   # the last validation's served diagnostic reads the finished net
        elif self.mid_steps and done == self.mid_step:
            self.finish(self.mid_steps, phase="mid")
            self._refresh()   # the rest of the run learns from the net the students just taught
        elif self.reg_steps > self.served_steps and done % self.cfg.refresh_every == 0:
            self._refresh()

    @property
    def warmup_steps(self) -> int:
        """Segmentation steps before the first registration step."""
        return round(WARMUP_FRACTION * self.iterations)

    @property
    def mid_step(self) -> int:
        """The segmentation step after which the mid-run phase runs."""
        return max(1, round(MID_AT * self.iterations))

    @property
    def mid_steps(self) -> int:
        """Registration steps of the mid-run phase."""
        return round(self.cfg.mid_phase * self.iterations)

    @property
    def final_steps(self) -> int:
        """Registration steps of the closing phase, after the students' last step."""
        return round(self.cfg.final_phase * self.iterations)

    def finish(self, steps: int, progress: bool = True, phase: str = "final") -> dict[str, float]:
        """``steps`` registration steps on the labels as they stand: the closing phase
        (``phase='final'``) or the mid-run phase (``'mid'``). Returns the phase's mean loss terms, named
        ``<phase>_loss`` and ``<phase>_dice_loss``, also logged with the last step's metrics."""
        if phase not in _PHASES:
            raise ValueError(f"phase must be one of {sorted(_PHASES)}, got {phase!r}")
        bar = Progress(steps, f"regnet {_PHASES[phase]}", enabled=progress and world_from_environment().is_main)
        seen: dict[str, list[float]] = {}
        for _ in range(int(steps)):
            self._registration_step()
            for key in ("loss", "dice_loss"):
                if key in self._metrics:
                    seen.setdefault(key, []).append(self._metrics[key])
            bar.update(1, loss=self._metrics["loss"])
        bar.close()
        summary = {f"{phase}_{k}": float(np.mean(v)) for k, v in seen.items()}
        self._metrics.update(summary)
        return summary

    def metrics(self) -> dict[str, float]:
        out, self._metrics = self._metrics, {}
        return out

    # -- diagnostics ------------------------------------------------------------------------------
    def _pair_scores(self, pairs: Sequence[tuple[RegVolume, RegVolume]], refined: bool = False) -> tuple[float, float]:
        """Mean foreground Dice of the warped moving truth vs the fixed truth, and mean % folded
        voxels, of the TRAINING net on native grids; ``refined``: its Fields refined as the
        served ones are (what RSL and REPS would read of the current net)."""
        dices, folded = [], []
        self.net.eval()
        with torch.no_grad():
            for fixed, moving in pairs:
                moved = place_pair(fixed.placed, moving.placed, self.reg_config.grid, self.reg_config.prealign)
                f_t = torch.from_numpy(fixed.placed.image)[None, None].to(self.device)
                m_t = torch.from_numpy(moved.image)[None, None].to(self.device)
                if refined and self.refine.active:
                    disp = refine_displacement(self.net, f_t, m_t, self.refine, self.loss)
                else:
                    disp, _ = self.net(f_t, m_t)
                field = field_of(disp[0].cpu().numpy(), fixed.placed, moved).dense()
                warped = field.warp_labels(moving.case.label, self.num_classes)
                dices.append(mean_foreground_dice(warped, fixed.case.label, self.num_classes))
                folded.append(regularity(field).folded_percent)
        self.net.train()
        return float(np.mean(dices)), float(np.mean(folded))

    def validate(self, step: int, scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        n, out = VAL_PAIRS, {}
        onto_val = [(v, a) for v in self.val for a in self.labeled][:n]
        if onto_val:
            # refined as served: the gate compares the students with the registration they are taught by
            out["atlas_dice"], out["atlas_folded_percent"] = self._pair_scores(onto_val, refined=True)
            self._last_val_dice = out["atlas_dice"]
        between = [(f, m) for f in self.val for m in self.val if f.case.patient_id != m.case.patient_id][:n]
        if between:
            out["val_pair_dice"], _ = self._pair_scores(between)
        hidden = [(v.case.case_id, a.case.case_id) for v in self.unlabeled for a in self.labeled
                  if v.case.case_id in self.diagnostic_labels][:n]
        if hidden and self.oracle is not None:
            # the Fields RSL reads right now (served net), against labels training never sees
            scores = [mean_foreground_dice(self.oracle.warped_label(t, (a,)), self.diagnostic_labels[t],
                                           self.num_classes) for t, a in hidden]
            out["served_hidden_dice"] = float(np.mean(scores))
        out["pseudo_coverage"] = self.pseudo.coverage()
        return out

    def atlas_val_dice(self) -> float:
        """``atlas_dice`` of the latest validation: the training net's atlas labels warped onto
        the validation volumes (refined as the served Fields are), what the gate
        (:mod:`joint.gate`) compares the students with."""
        if self._last_val_dice < 0:
            raise RuntimeError("the coupled registration net has not been validated yet (no validation volumes?)")
        return self._last_val_dice

    # -- files and state --------------------------------------------------------------------------
    def checkpoint(self, out_dir: Path, best: bool) -> None:
        """``out_dir/reg/best.pt`` (the net at the students' best step) or ``last.pt``."""
        self.save(Path(out_dir) / "reg" / ("best.pt" if best else "last.pt"))

    def save(self, path: Path) -> None:
        """The training net at ``path``, in the format :func:`reg.checkpoint.load_model` and the
        ``learned:`` backend read."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, {
            "config": self.reg_config.to_dict(), "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.reg_steps, "best_score": self._last_val_dice,
            "rng": {"numpy": self.rng.bit_generator.state}, "num_classes": self.num_classes,
            "origin": "cctr-coupled",
        })

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(), "served": self.served.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state, "pseudo": self.pseudo.state_dict(),
            "reg_steps": self.reg_steps, "served_steps": self.served_steps, "last_val_dice": self._last_val_dice,
        }

    def load_state_dict(self, state: Mapping) -> None:
        if not state:
            return
        self.net.load_state_dict(state["net"])
        self.served.load_state_dict(state["served"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.pseudo.load_state_dict(state["pseudo"])
        self.reg_steps, self.served_steps = int(state["reg_steps"]), int(state["served_steps"])
        self._last_val_dice = float(state.get("last_val_dice", -1.0))
        if self.served_steps:
            # the oracle was warmed with the checkpoint's starting net; the served one has moved on
            self._recompute()
