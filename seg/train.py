"""The one segmentation trainer: every method (``supervised``, ``ct``, ``cct`` and those the joint
package adds) runs through :func:`train`.

A :class:`Method` says which students train, whether cross teaching and the pixel contrastive
loss are on, whether the batch has an unlabeled part, and how to build the method's trainer
hooks (:class:`seg.hooks.TrainerHook`, the one extension protocol: extra labeled samples,
extra losses, extra contrastive positives, after-step work, metrics, validation scalars, checkpoint state).

Training is iteration based with a poly learning rate. Every ``val_every`` steps both students
predict the validation volumes slice by slice and are scored in 3D (:mod:`seg.validation`);
``best.pt`` holds the best validation Dice of student A, ``last.pt`` the latest state (written at
every validation and at the end).
Both are written atomically and hold everything needed to resume exactly: students,
optimisers, step, RNG and sampler state, and every hook's state. ``config.yaml`` and
TensorBoard logs (``tb/``) sit next to them.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from contextlib import ExitStack
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from cctr.seg.atomic import atomic_path, discard_on_failure
from cctr.seg.config import TrainConfig, from_dict, save_config, to_dict
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.orientation import obliquity_deg
from cctr.seg.data.split import Split
from cctr.seg.diagnostics import DiagnosticsHook
from cctr.seg.distributed import (World, check_batch, check_losses_everywhere, gather_outputs, rows_of_rank,
                             world_from_environment)
from cctr.seg.distributed import start as start_group
from cctr.seg.distributed import stop as stop_group
from cctr.seg.feasibility import check_image_size, check_training_memory
from cctr.seg.geometry_check import geometry_stats
from cctr.seg.guard import BadStepBudget, NonFiniteError, check_gradients, check_state_finite
from cctr.seg.hooks import ExtraSamples, TrainerHook, check_names
from cctr.seg.inference import read_checkpoint_dict
from cctr.seg.losses import ExtraKeys, PartAnchors, sigmoid_rampup
from cctr.seg.objective import base_losses, extra_sample_losses, first_rows
from cctr.seg.progress import Progress
from cctr.seg.run_identity import config_changes
from cctr.seg.runlock import run_lock
from cctr.seg.slices import SliceBatch, SliceSampler, prepare_volume
from cctr.seg.students import StudentOutput, build_student
from cctr.seg.spacing_outliers import spacing_outliers
from cctr.seg.train_data import TrainData, load_train_data, pool_note, unlisted_labeled
from cctr.seg.validation import validate, write_overlays


@dataclass(frozen=True)
class Method:
    students: tuple[str, ...]          # ('a',) or ('a', 'b')
    cross_teaching: bool
    contrastive: bool
    unlabeled: bool                    # whether batches have an unlabeled part
    # builds the method's own hooks from the config, the loaded data and the run folder
    build_hooks: Optional[Callable[[TrainConfig, "TrainData", Path], tuple[TrainerHook, ...]]] = None


# the methods seg defines; the joint package passes a mapping extended with its own
SEG_METHODS: Mapping[str, Method] = MappingProxyType({
    "supervised": Method(students=("a",), cross_teaching=False, contrastive=False, unlabeled=False),
    "ct": Method(students=("a", "b"), cross_teaching=True, contrastive=False, unlabeled=True),
    "cct": Method(students=("a", "b"), cross_teaching=True, contrastive=True, unlabeled=True),
})


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Optional[Path]    # None when the split has no validation patients
    best_score: float                  # mean validation Dice of student A at the best step
    best_step: int
    seconds: float                     # wall time of this call
    history: list[dict] = field(default_factory=list)  # one record per validation


# what a last.pt must hold to be resumed from
RESUME_KEYS = ("config", "students", "optimizers", "sampler", "contrast_rng", "torch_rng", "hooks", "step",
               "best_score", "best_step", "history")


# the student whose validation Dice picks best.pt, and which predicts: A (METHOD.md part 8)
SELECTED = "a"
# SSL4MIS's schedule and regularisation, kept by every configuration this project runs
POLY_POWER = 0.9
WEIGHT_DECAY = 1e-4


def poly_lr(base_lr: float, step: int, iterations: int, power: float = POLY_POWER) -> float:
    return base_lr * (1.0 - step / iterations) ** power


def training_device(name: str) -> torch.device:
    """The torch device ``name`` names, refused with a clear error when it is malformed or
    this machine lacks it (a CUDA device without CUDA)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: {name!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but this torch build or machine has no CUDA; use device=cpu")
    return device


def _atomic_save(obj: dict, path: Path) -> None:
    """Write a checkpoint atomically; one holding NaN or inf is refused, never written."""
    check_state_finite(obj, str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)   # through a Python file, so a full disk surfaces as OSError (ENOSPC), not a torch RuntimeError


def _check_sizes(cfg: TrainConfig, students: Sequence[str]) -> None:
    check_image_size(cfg.image_size)
    h, w = cfg.image_size
    for name in students:
        sc = cfg.student_a if name == "a" else cfg.student_b
        side = 32 if sc.kind == "swin" else 2 ** (len(sc.widths) - 1)
        if h % side or w % side or (sc.kind == "swin" and h * w < 2 * 32 * 32):
            raise ValueError(f"image_size {cfg.image_size} must be divisible by {side} for student {name} ({sc.kind})"
                             + (" and larger than 32x32" if sc.kind == "swin" else ""))


def train(
    cfg: TrainConfig,
    dataset: Dataset,
    split: Split,
    hooks: Sequence[TrainerHook] = (),
    *,
    methods: Mapping[str, Method] = SEG_METHODS,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.method`` on ``dataset`` / ``split`` into ``cfg.out_dir``.

    ``hooks`` are added after the method's own (``Method.build_hooks``). With ``resume`` the
    run continues from ``last.pt`` and must have the same configuration; without it, a folder
    that already holds a checkpoint is refused.
    """
    started = time.perf_counter()
    if cfg.method not in methods:
        raise ValueError(f"unknown method {cfg.method!r}; known: {sorted(methods)}")
    method = methods[cfg.method]
    _check_sizes(cfg, method.students)
    world = world_from_environment()
    check_batch(cfg.labeled_batch, cfg.unlabeled_batch if method.unlabeled else 0, world)
    device = training_device(cfg.device)
    if world.active and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)   # one GPU per process
    # a batch that cannot fit is refused before any data is read (seg.feasibility)
    check_training_memory([cfg.student_a if n == "a" else cfg.student_b for n in method.students],
                          len(dataset.class_names), cfg.embedding_dim, cfg.image_size, cfg.labeled_batch // world.size,
                          (cfg.unlabeled_batch if method.unlabeled else 0) // world.size, str(device))
    out_dir = Path(cfg.out_dir)
    last_path = out_dir / "last.pt"
    checkpoint = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"{last_path}: nothing to resume")
        checkpoint = read_checkpoint_dict(last_path, RESUME_KEYS)
        saved = from_dict(checkpoint["config"], type(cfg)(), where=str(last_path))
        changed = config_changes(saved, cfg)   # not its location: a moved or copied run folder resumes
        if changed:
            raise ValueError(f"{last_path}: cannot resume with a different configuration; changed: {changed}")
    elif last_path.exists():
        raise ValueError(f"{out_dir}: already holds a checkpoint; continue it with --resume or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if world.is_main:   # the one writer
            stack.enter_context(run_lock(out_dir))
            if checkpoint is None:
                # a fresh run that dies before its first checkpoint leaves no config.yaml behind
                stack.enter_context(discard_on_failure([out_dir / "config.yaml"], unless=last_path))
        if start_group(world, device):
            stack.callback(stop_group)
        return _train_locked(cfg, dataset, split, method, tuple(hooks), checkpoint, device, progress, started, world)


def _train_locked(cfg: TrainConfig, dataset: Dataset, split: Split, method: Method, hooks: tuple[TrainerHook, ...],
                  checkpoint: Optional[dict], device: torch.device, progress: bool, started: float,
                  world: World) -> TrainResult:
    """:func:`train` once its run folder is locked: everything that writes into it (only rank 0
    writes when several processes train; :mod:`seg.distributed`)."""
    out_dir = Path(cfg.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if world.is_main:
        save_config(cfg, out_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    data = load_train_data(dataset, split, cfg.labeled, with_unlabeled=method.unlabeled)
    if world.is_main:
        note = pool_note(data.unlisted, unlisted_labeled(dataset, split))
        for line in ([f"note: {note}"] if note else []) + [f"warning: {w}" for w in
                                                           spacing_outliers(data.labeled + data.unlabeled + data.val)]:
            print(f"cctr: {line}", file=sys.stderr)
    num_classes = len(data.class_names)
    # the training volumes' spacing / field of view, so predict can warn about inputs far outside them
    geometry = geometry_stats([c.spacing for c in data.labeled + data.unlabeled],
                              [c.shape for c in data.labeled + data.unlabeled])
    # and how oblique they are, so predict can tell an input turned far from all of them
    geometry["oblique_deg_max"] = max(obliquity_deg(c.affine) for c in data.labeled + data.unlabeled)
    own = method.build_hooks(cfg, data, out_dir) if method.build_hooks else ()
    diag = DiagnosticsHook(cfg.diag_every, cfg.contrast, num_classes, data.diagnostic_labels)
    all_hooks: tuple[TrainerHook, ...] = (*own, *hooks, diag)
    check_names(all_hooks)

    students = {n: build_student(cfg.student_a if n == "a" else cfg.student_b, num_classes, cfg.embedding_dim).to(device)
                for n in method.students}
    optimizers = {n: _optimizer(cfg, m) for n, m in students.items()}
    if not method.contrastive:
        # no loss reaches the projector heads: say so, so that data-parallel training expects no gradient there
        for m in students.values():
            m.projector.requires_grad_(False)
    # the modules that run forward: the students, wrapped so that gradients are averaged over ranks
    engines: dict[str, nn.Module] = {n: DistributedDataParallel(m) if world.active else m for n, m in students.items()}
    sampler = SliceSampler(
        [prepare_volume(c, cfg.normalization, window=cfg.intensity_window) for c in data.labeled],
        [prepare_volume(c, cfg.normalization, window=cfg.intensity_window) for c in data.unlabeled],
        cfg.labeled_batch,
        cfg.unlabeled_batch if method.unlabeled else 0,
        cfg.image_size,
        cfg.augment,
        cfg.seed,
    )
    contrast_rng = torch.Generator().manual_seed(cfg.seed + 1)
    start, best_score, best_step, history = 0, -1.0, -1, []
    if checkpoint is not None:
        try:
            start, best_score, best_step, history = _restore(checkpoint, students, optimizers, sampler, contrast_rng,
                                                             all_hooks)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"{last_path}: cannot resume from this checkpoint ({type(exc).__name__}: {exc})") from exc

    def snapshot(step: int) -> dict:
        return {
            "config": to_dict(cfg),
            "class_names": list(data.class_names),
            "method": cfg.method,
            "step": step,
            "students": {n: m.state_dict() for n, m in students.items()},
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "sampler": sampler.state_dict(),
            "contrast_rng": contrast_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "hooks": {h.name: h.state_dict() for h in all_hooks},
            "geometry": geometry,
            "best_score": best_score,
            "best_step": best_step,
            "history": history,
        }

    # events are logged at the count of finished steps, so a resumed run first logs start + 1: readers must
    # drop the interrupted run's events from there on, and keep the validation logged at ``start``
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start + 1 if start else None) if world.is_main else _Silent()
    rampup_steps = cfg.rampup_fraction * cfg.iterations
    for m in students.values():
        m.train()
    bar = Progress(cfg.iterations, f"train {cfg.method}", initial=start, enabled=progress and world.is_main)
    bad_steps = BadStepBudget(cfg.skip_nonfinite)
    try:
        for step in range(start, cfg.iterations):
            lr = poly_lr(cfg.lr, step, cfg.iterations)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr
            whole = sampler.next_batch()   # on the CPU: hooks read its geometry there
            batch = whole.rows(rows_of_rank(whole.num_labeled, whole.image.shape[0], world)) if world.active else whole
            extras = _extra_samples(all_hooks, step, batch)
            # one forward pass over the batch and the hooks' extra samples; the rest sees the batch's rows
            image = torch.cat([batch.image, *(e.image for e in extras.values())]).to(device)
            every = {n: m(image) for n, m in engines.items()}
            outputs = {n: first_rows(o, batch.image.shape[0]) for n, o in every.items()} if extras else every
            ramp = sigmoid_rampup(step, rampup_steps)
            losses = base_losses(cfg, method.cross_teaching, method.contrastive, batch, outputs, ramp, contrast_rng,
                                 _extra_positives(all_hooks, step, batch, outputs))
            for hook in all_hooks:
                for n, value in hook.losses(step, batch, outputs).items():
                    losses[f"{n}/{hook.name}"] = value
            losses.update(extra_sample_losses(extras, every, batch.image.shape[0]))
            for hook in all_hooks:
                hook.inspect_losses(step, batch, outputs, losses)
            total = sum(losses.values())
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            try:
                # a NaN or inf term stops the run naming the step and the term, before it reaches the weights
                check_losses_everywhere(step + 1, {**losses, "total": total}, world)
                total.backward()
                for n, m in students.items():
                    check_gradients(step + 1, ((f"{n}.{k}", p) for k, p in m.named_parameters()))
            except NonFiniteError as exc:
                if not bad_steps.absorb(exc):
                    raise
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                bar.update(1)
                continue
            for opt in optimizers.values():
                opt.step()
            mine_only = {n: StudentOutput(o.logits.detach(), o.features.detach(), o.embedding.detach())
                         for n, o in outputs.items()}
            gathered = ({n: gather_outputs(o, whole, world) for n, o in outputs.items()}
                        if world.active and any(h.sees_whole_batch for h in all_hooks) else None)
            for hook in all_hooks:
                if hook.sees_whole_batch and gathered is not None:
                    hook.after_step(step, whole, gathered)   # the same on every process: hook state agrees
                else:
                    hook.after_step(step, batch, mine_only)

            done = step + 1
            for key, value in losses.items():
                writer.add_scalar(f"loss/{key}", float(value.detach()), done)
            writer.add_scalar("loss/total", float(total.detach()), done)
            writer.add_scalar("lr", lr, done)
            writer.add_scalar("rampup", ramp, done)
            for hook in all_hooks:
                for key, value in hook.metrics().items():
                    writer.add_scalar(f"{hook.name}/{key}", value, done)
            bar.update(1, loss=float(total.detach()))

            if data.val and (done % cfg.val_every == 0 or done == cfg.iterations):
                scores, first_preds = validate(students, data.val, cfg, data.class_names)
                for n, record in scores.items():
                    for key, value in record.items():
                        writer.add_scalar(f"val_{n}/{key}", value, done)
                record = {"step": done, **{f"{n}_{k}": v for n, r in scores.items() for k, v in r.items()}}
                for hook in all_hooks:
                    for key, value in hook.validate(done, scores).items():
                        writer.add_scalar(f"val_{hook.name}/{key}", value, done)
                        record[f"{hook.name}_{key}"] = value
                history.append(record)
                bar.note(f"step {done}: validation Dice {scores[SELECTED]['dice']:.4f} (student {SELECTED})")
                write_overlays(writer, data.val[0], first_preds, num_classes, done)
                if scores[SELECTED]["dice"] > best_score:
                    best_score, best_step = scores[SELECTED]["dice"], done
                    if world.is_main:
                        _atomic_save(snapshot(done), best_path)
                        for hook in all_hooks:
                            hook.checkpoint(out_dir, best=True)
            if world.is_main and (done % cfg.val_every == 0 or done == cfg.iterations):
                _atomic_save(snapshot(done), last_path)
                for hook in all_hooks:
                    hook.checkpoint(out_dir, best=False)
    finally:
        bar.close()
        writer.close()
    return TrainResult(
        out_dir=out_dir,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.is_file() else None,
        best_score=best_score,
        best_step=best_step,
        seconds=time.perf_counter() - started,
        history=history,
    )


class _Silent:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def add_scalar(self, *args: object, **kwargs: object) -> None:
        return None

    def add_image(self, *args: object, **kwargs: object) -> None:
        return None

    def close(self) -> None:
        return None


def _extra_samples(hooks: Sequence[TrainerHook], step: int, batch: SliceBatch) -> dict[str, ExtraSamples]:
    """Hook name -> the labeled samples it adds to this step, for the hooks that add any."""
    return {h.name: e for h in hooks if (e := h.extra_samples(step, batch)) is not None}


def _extra_positives(hooks: Sequence[TrainerHook], step: int, batch: SliceBatch,
                     outputs: Mapping[str, StudentOutput]) -> Callable[[str, PartAnchors], Optional[ExtraKeys]]:
    """Per student and its drawn anchors, the one extra contrastive positive the hooks give (two
    hooks giving one for the same student is a configuration error, not something to merge silently)."""
    def for_student(student: str, anchors: PartAnchors) -> Optional[ExtraKeys]:
        given = [(h.name, k) for h in hooks if (k := h.extra_positive(step, batch, outputs, student, anchors)) is not None]
        if len(given) > 1:
            raise ValueError(f"hooks {[n for n, _ in given]} each give an extra positive for student {student!r}")
        return given[0][1] if given else None
    return for_student


def _restore(checkpoint: Mapping, students: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
             sampler: SliceSampler, contrast_rng: torch.Generator,
             hooks: Sequence[TrainerHook]) -> tuple[int, float, int, list]:
    """Put a ``last.pt`` back into the run's objects; returns (step, best score, best step, history)."""
    for n, m in students.items():
        m.load_state_dict(checkpoint["students"][n])
        optimizers[n].load_state_dict(checkpoint["optimizers"][n])
    sampler.load_state_dict(checkpoint["sampler"])
    contrast_rng.set_state(checkpoint["contrast_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    for hook in hooks:
        hook.load_state_dict(checkpoint["hooks"].get(hook.name, {}))
    return (int(checkpoint["step"]), float(checkpoint["best_score"]), int(checkpoint["best_step"]),
            list(checkpoint["history"]))


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=WEIGHT_DECAY)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adamw'")
