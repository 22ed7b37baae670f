"""Pretraining of the learned registration net on volume pairs.

Training sees only the TRAINING volumes it is given (labeled or not): each step draws a
batch of pairs, a share of them the two frames (ED/ES) of one patient and the rest two
different patients. Every pair is pre-aligned (:mod:`reg.placement`) exactly as at
inference. The loss is image similarity + smoothness, plus Dice of warped labels on pairs
where both volumes are labeled when ``loss.dice_weight > 0``; then the first pair of every
batch is two labeled volumes (with one labeled patient: its ED and ES frames, both ways). Every ``val_every`` steps the
Dice of warped labels is measured on fixed validation pairs, on native grids.

The output folder holds ``config.yaml``, ``last.pt`` (every validation and at the end),
``best.pt`` (best validation Dice) and TensorBoard logs in ``tb/`` (scalars, and image
panels: fixed, moving, warped, deformed grid). A checkpoint holds model, optimiser, step,
every RNG state and the config; resuming from ``last.pt`` replays the remaining steps
exactly as an uninterrupted run would (bit-identical on CPU).

Reliability: a NaN or inf loss term or gradient stops training naming the step and the term
(``max_bad_steps`` lets a few such steps be skipped instead), and no checkpoint holding NaN or
inf is written; ``config.yaml`` is written once the volumes have been read and checked, and
removed again if a fresh run fails before its first checkpoint. The caller owns the rest of
what an application needs: it holds the run folder's lock (the ``cctr`` commands do) and may
pass a progress reporter (:class:`Reporter`; the ``cctr`` commands pass one that also prints
plain lines when stderr is not a terminal); the default is a tqdm bar on a terminal only.
"""
from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cctr.reg.atomic import atomic_path
from cctr.reg.checkpoint import read_checkpoint, save_checkpoint
from cctr.reg.config import RegConfig, dump_config
from cctr.reg.guard import NonFiniteError, check_gradients, check_losses
from cctr.reg.jacobian import regularity
from cctr.reg.losses import RegistrationLoss
from cctr.reg.model import RegistrationNet
from cctr.reg.placement import Placed, check_volume, field_of, place_pair, place_volume


# steps between loss scalars in TensorBoard: cheap enough to show the short runs' curves too
LOG_EVERY = 5


class Reporter(Protocol):
    """What the trainer tells about its progress: steps done (with the latest loss), notes
    (validation results), and the end."""

    def update(self, n: int = 1, **values: object) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


# (total steps, steps already done) -> the run's reporter
ReporterFactory = Callable[[int, int], Reporter]


class _TerminalBar:
    """The default :class:`Reporter`: a tqdm bar when stderr is a terminal, silent otherwise."""

    def __init__(self, total: int, initial: int) -> None:
        self._bar = tqdm(total=total, initial=initial, desc="reg train", disable=not _tty(), dynamic_ncols=True)

    def update(self, n: int = 1, **values: object) -> None:
        self._bar.update(n)
        if values:
            self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()})

    def note(self, text: str) -> None:
        if not self._bar.disable:
            self._bar.write(f"reg train: {text}", file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


@dataclass(frozen=True)
class Volume:
    """One volume handed to training: image (Z, Y, X), spacing (z, y, x) mm, optional label
    (Z, Y, X) of class indices."""

    case_id: str
    patient_id: str
    image: np.ndarray
    spacing: tuple[float, float, float]
    label: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Prepared:
    volume: Volume
    placed: Placed
    onehot: Optional[np.ndarray]  # (C, Zc, Yc, Xc) canonical soft one-hot, when labeled


def mean_foreground_dice(pred_zyx: np.ndarray, ref_zyx: np.ndarray, num_classes: int) -> float:
    """Dice averaged over foreground classes present in either map (validation only; the
    reported metrics come from the project's metrics module)."""
    scores = []
    for c in range(1, num_classes):
        p, r = pred_zyx == c, ref_zyx == c
        total = int(p.sum() + r.sum())
        if total:
            scores.append(2.0 * float((p & r).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def sample_pairs(rng: np.random.Generator, volumes: Sequence[Volume], count: int, intra_fraction: float) -> list[tuple[int, int]]:
    """``count`` (fixed, moving) index pairs: with probability ``intra_fraction`` two frames of
    one patient (when some patient has two), otherwise volumes of two different patients."""
    by_patient: dict[str, list[int]] = {}
    for i, v in enumerate(volumes):
        by_patient.setdefault(v.patient_id, []).append(i)
    multi = [ids for ids in by_patient.values() if len(ids) > 1]
    patients = list(by_patient.values())
    pairs = []
    for _ in range(count):
        if multi and (len(patients) < 2 or rng.random() < intra_fraction):
            ids = multi[int(rng.integers(len(multi)))]
            a, b = rng.choice(len(ids), size=2, replace=False)
            pairs.append((ids[int(a)], ids[int(b)]))
        else:
            pa, pb = rng.choice(len(patients), size=2, replace=False)
            fa, fb = patients[int(pa)], patients[int(pb)]
            pairs.append((fa[int(rng.integers(len(fa)))], fb[int(rng.integers(len(fb)))]))
    return pairs


def labeled_pairs_first(rng: np.random.Generator, volumes: Sequence[Volume], pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``pairs`` with the first one replaced by a pair of two distinct LABELED volumes (any two:
    the ED/ES frames of one labeled patient count), so the Dice term sees labels in every
    batch instead of in the rare draws that happen to pair two labeled volumes; unchanged
    when fewer than two volumes are labeled."""
    labeled = [i for i, v in enumerate(volumes) if v.label is not None]
    if len(labeled) < 2 or not pairs:
        return pairs
    a, b = rng.choice(len(labeled), size=2, replace=False)
    return [(labeled[int(a)], labeled[int(b)]), *pairs[1:]]


def validation_pairs(volumes: Sequence[Volume], count: int, seed: int) -> list[tuple[int, int]]:
    """A fixed list of inter-patient pairs of LABELED validation volumes (both directions
    of a patient pair are distinct pairs); pairs of one patient's frames when only one
    patient is labeled."""
    labeled = [i for i, v in enumerate(volumes) if v.label is not None]
    candidates = [(a, b) for a in labeled for b in labeled if volumes[a].patient_id != volumes[b].patient_id]
    if not candidates:
        candidates = [(a, b) for a in labeled for b in labeled if a != b]
    if not candidates:
        return []
    order = np.random.default_rng(seed).permutation(len(candidates))
    return [candidates[i] for i in order[:count]]


def prepare(volumes: Sequence[Volume], config: RegConfig, num_classes: int, desc: str) -> list[Prepared]:
    out = []
    for v in tqdm(volumes, desc=desc, unit="vol", disable=not _tty(), leave=False):
        check_volume(v.image, v.spacing, v.case_id)
        placed = place_volume(v.image, v.spacing, config.grid)
        onehot = placed.canonical_onehot(v.label, num_classes) if v.label is not None else None
        out.append(Prepared(v, placed, onehot))
    return out


def _tty() -> bool:
    return sys.stderr.isatty()


def _batch(pairs: list[tuple[int, int]], data: list[Prepared], config: RegConfig) -> dict[str, torch.Tensor]:
    fixed, moving, f_oh, m_oh, both = [], [], [], [], []
    for fi, mi in pairs:
        f, m = data[fi], data[mi]
        m_placed = place_pair(f.placed, m.placed, config.grid, config.prealign)
        fixed.append(f.placed.image)
        moving.append(m_placed.image)
        labeled = f.onehot is not None and m.onehot is not None
        both.append(labeled)
        if labeled:
            m_oh.append(m_placed.canonical_onehot(m.volume.label, f.onehot.shape[0]))  # type: ignore[union-attr]
            f_oh.append(f.onehot)
    out = {
        "fixed": torch.from_numpy(np.stack(fixed))[:, None],
        "moving": torch.from_numpy(np.stack(moving))[:, None],
        "labeled": torch.tensor(both),
    }
    if f_oh:
        out["fixed_onehot"] = torch.from_numpy(np.stack(f_oh))
        out["moving_onehot"] = torch.from_numpy(np.stack(m_oh))
    return out


def _grid_image(shape_yx: tuple[int, int], spacing: int = 4) -> np.ndarray:
    img = np.zeros(shape_yx, np.float32)
    img[::spacing, :] = 1.0
    img[:, ::spacing] = 1.0
    return img


def _panel(net: RegistrationNet, batch: dict[str, torch.Tensor], disp: torch.Tensor, warped: torch.Tensor) -> np.ndarray:
    """(1, H, 4W) mid-slice panel of the first pair: fixed | moving | warped | deformed grid."""
    z = batch["fixed"].shape[2] // 2
    grid = torch.from_numpy(np.broadcast_to(_grid_image(tuple(batch["fixed"].shape[3:])), batch["fixed"].shape[2:]).copy()).to(disp.device)
    warped_grid = net.warp(grid[None, None], disp[:1])
    tiles = [batch["fixed"][0, 0, z], batch["moving"][0, 0, z], warped[0, 0, z], warped_grid[0, 0, z]]
    return torch.cat([t.detach().clamp(0, 1) for t in tiles], dim=1)[None].cpu().numpy()


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def _restore_rng(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    return rng


def validate(net: RegistrationNet, pairs: list[tuple[int, int]], data: list[Prepared], config: RegConfig, num_classes: int) -> dict[str, float]:
    """Mean foreground Dice of warped labels on native grids, and mean % folded voxels."""
    if not pairs:
        return {}
    net.eval()
    dices, folded = [], []
    with torch.no_grad():
        for fi, mi in pairs:
            f, m = data[fi], data[mi]
            m_placed = place_pair(f.placed, m.placed, config.grid, config.prealign)
            device = next(net.parameters()).device
            disp, _ = net(torch.from_numpy(f.placed.image)[None, None].to(device), torch.from_numpy(m_placed.image)[None, None].to(device))
            field = field_of(disp[0].cpu().numpy(), f.placed, m_placed).dense()
            dices.append(mean_foreground_dice(field.warp_labels(m.volume.label, num_classes), f.volume.label, num_classes))
            folded.append(regularity(field).folded_percent)
    net.train()
    return {"dice": float(np.mean(dices)), "folded_percent": float(np.mean(folded))}


def train(
    config: RegConfig,
    train_volumes: Sequence[Volume],
    val_volumes: Sequence[Volume],
    num_classes: int,
    out_dir: Path,
    resume: bool = False,
    max_bad_steps: int = 0,
    progress: Optional[ReporterFactory] = None,
) -> Path:
    """Train (or resume) into ``out_dir``; returns the path of ``best.pt`` (``last.pt`` when
    there is nothing to validate on). ``max_bad_steps``: how many steps with a non-finite
    loss or gradient may be skipped (with a warning) before training stops; 0 stops at once.
    ``progress`` builds the run's reporter (default: a tqdm bar on a terminal). The caller
    holds the run folder's lock."""
    out_dir = Path(out_dir)
    if len(train_volumes) < 2:
        raise ValueError(f"registration training needs at least two training volumes to pair, got {len(train_volumes)}")
    if max_bad_steps < 0:
        raise ValueError(f"max_bad_steps must be >= 0, got {max_bad_steps}")
    last = out_dir / "last.pt"
    tc = config.train
    with torch.random.fork_rng():
        torch.manual_seed(tc.seed)
        net = RegistrationNet(config.net)
    device = torch.device(tc.device)
    net = net.to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=tc.learning_rate)
    rng = np.random.default_rng(tc.seed)
    step, best = 0, -np.inf
    if resume:
        ckpt = read_checkpoint(last)
        stored = RegConfig.from_dict(ckpt["config"], where=f"{last} (stored config)")
        if stored.with_overrides(steps=tc.steps).to_dict() != config.to_dict():
            raise ValueError(
                f"{last}: was trained with a different config; resume with the stored one "
                f"({out_dir / 'config.yaml'}), changing at most the number of steps"
            )
        try:
            net.load_state_dict(ckpt["model"])  # loads onto the parameters' device
            optimiser.load_state_dict(ckpt["optimizer"])
            step, best = int(ckpt["step"]), float(ckpt["best_score"])
            rng = _restore_rng(ckpt["rng"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"{last}: cannot resume from this checkpoint ({type(exc).__name__}: {exc})") from exc
    elif last.exists():
        raise ValueError(f"{out_dir}: already holds a run; resume it or choose another folder")

    train_data = prepare(train_volumes, config, num_classes, "placing train volumes")
    val_data = prepare(val_volumes, config, num_classes, "placing val volumes")
    with ExitStack() as cleanup:
        if not resume:
            cleanup.callback(_discard_if_unfinished, out_dir / "config.yaml", last)
        with atomic_path(out_dir / "config.yaml") as tmp:
            Path(tmp).write_text(dump_config(config))
        _run(config, net, optimiser, rng, step, best, device, train_data, val_data, train_volumes, val_volumes,
             num_classes, out_dir, resume, max_bad_steps, progress or _TerminalBar)
        cleanup.pop_all()  # finished: keep everything
    return out_dir / "best.pt" if (out_dir / "best.pt").exists() else last


def _discard_if_unfinished(config_path: Path, last: Path) -> None:
    """After a fresh run failed: remove its ``config.yaml`` unless a checkpoint exists (then a
    resume needs it)."""
    if not last.exists() and config_path.is_file():
        config_path.unlink()


def _run(config: RegConfig, net: RegistrationNet, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
         step: int, best: float, device: torch.device, train_data: list[Prepared], val_data: list[Prepared],
         train_volumes: Sequence[Volume], val_volumes: Sequence[Volume], num_classes: int, out_dir: Path,
         resume: bool, max_bad_steps: int, progress: ReporterFactory) -> None:
    """The training loop proper, from ``step`` to ``config.train.steps``."""
    tc, last = config.train, out_dir / "last.pt"
    val_pairs = validation_pairs(val_volumes, tc.val_pairs, tc.seed)
    objective = RegistrationLoss(config.loss)
    # logged at the count of finished steps: a resumed run's first event is step + 1, and the events the
    # interrupted run logged at ``step`` (its last validation) stay
    writer = SummaryWriter(log_dir=str(out_dir / "tb"), purge_step=step + 1 if resume else None)

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, {
            "config": config.to_dict(), "model": net.state_dict(), "optimizer": optimiser.state_dict(),
            "step": step, "best_score": best, "rng": _rng_state(rng), "num_classes": num_classes,
        })

    net.train()
    bar = progress(tc.steps, step)
    skipped = 0
    try:
        while step < tc.steps:
            pairs = sample_pairs(rng, train_volumes, tc.batch_size, tc.intra_patient_fraction)
            if config.loss.dice_weight > 0:
                pairs = labeled_pairs_first(rng, train_volumes, pairs)
            batch = _batch(pairs, train_data, config)
            batch = {k: v.to(device) for k, v in batch.items()}
            disp, warped = net(batch["fixed"], batch["moving"])
            loss_sim, loss_smooth, loss = objective(warped, batch["fixed"], disp)
            loss_dice = None
            terms = {"similarity": loss_sim, "smoothness": loss_smooth}
            if config.loss.dice_weight > 0 and "fixed_onehot" in batch:
                warped_oh = net.warp(batch["moving_onehot"], disp[batch["labeled"]])
                loss_dice = objective.dice(warped_oh, batch["fixed_onehot"])
                loss = loss + config.loss.dice_weight * loss_dice
                terms["dice"] = loss_dice
            optimiser.zero_grad()
            try:
                check_losses(step + 1, {**terms, "total": loss})
                loss.backward()
                check_gradients(step + 1, net.named_parameters())
            except NonFiniteError as exc:
                if skipped >= max_bad_steps:
                    raise
                skipped += 1  # the batch's RNG draws stay consumed, so a resume still replays exactly
                print(f"cctr: warning: {exc.detail}; skipping the step ({skipped} of {max_bad_steps} allowed)", file=sys.stderr)
                optimiser.zero_grad()
                good = False
            else:
                optimiser.step()
                good = True
            step += 1
            bar.update(1, loss=float(loss.detach()))
            if step % LOG_EVERY == 0 or step == tc.steps:
                writer.add_scalar("loss/total", float(loss.detach()), step)
                writer.add_scalar("loss/similarity", float(loss_sim.detach()), step)
                writer.add_scalar("loss/smoothness", float(loss_smooth.detach()), step)
                if loss_dice is not None:
                    writer.add_scalar("loss/dice", float(loss_dice.detach()), step)
            if good and (step % tc.val_every == 0 or step == tc.steps):
                writer.add_image("pair/fixed_moving_warped_grid", _panel(net, batch, disp, warped), step)
            if step % tc.val_every == 0 or step == tc.steps:
                scores = validate(net, val_pairs, val_data, config, num_classes)
                for k, v in scores.items():
                    writer.add_scalar(f"val/{k}", v, step)
                if scores:
                    bar.note(f"validation Dice {scores['dice']:.4f} (folded {scores['folded_percent']:.2f}%)")
                if scores and scores["dice"] > best:
                    best = scores["dice"]
                    checkpoint(out_dir / "best.pt")
                checkpoint(last)
    finally:
        bar.close()
        writer.close()
