"""The one segmentation trainer: every method (``supervised``, ``ct``, ``cct`` and those the joint
package adds) runs through :func:`train`.

A method (:class:`Method`) says which students train, whether cross teaching and the pixel
contrastive loss are on, whether the batch has an unlabeled part, and optionally how to build
extra loss terms. Extension points, for registration-aware methods:

- an **extra term** is a callable ``(step, batch, outputs) -> {student name: weighted scalar}``
  whose losses are added to the total; it may define ``after_step(step, batch, outputs)``
  (called after the optimiser step, with detached outputs, e.g. to refresh a memory bank) and
  ``state_dict()`` / ``load_state_dict(state)`` (saved in checkpoints so resume stays exact);
  its ``name`` attribute, if any, labels its losses in TensorBoard;
- an **extra-positive factory** ``(step, batch, outputs, student) -> ExtraPositive | None``
  gives the pixel contrastive loss an extra positive key per anchor of that student's
  embedding (see :data:`seg.losses.ExtraPositive`).

Training is iteration based with a poly learning rate. Every ``val_every`` steps both students
predict the validation volumes slice by slice (:mod:`seg.inference`) and are scored in 3D
(:func:`seg.metrics.score_case`); ``best.pt`` holds the best validation Dice of
``select_student``, ``last.pt`` the latest state. Both are written atomically and hold
everything needed to resume exactly: students, optimisers, step, RNG and sampler state.
``config.yaml`` and TensorBoard logs (``tb/``) sit next to them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from seg.atomic import atomic_path
from seg.config import TrainConfig, differences, from_dict, save_config, to_dict
from seg.data.case import Case, CaseError
from seg.data.dataset import Dataset
from seg.data.split import Split
from seg.inference import predict_labels
from seg.losses import (
    ContrastPart,
    ExtraPositive,
    cross_teaching_loss,
    pixel_contrastive_loss,
    sigmoid_rampup,
    supervised_loss,
)
from seg.metrics import score_case
from seg.slices import SliceBatch, SliceSampler, prepare_volume
from seg.students import StudentOutput, build_student

ExtraTerm = Callable[[int, SliceBatch, dict[str, StudentOutput]], dict[str, torch.Tensor]]
ExtraPositiveFactory = Callable[[int, SliceBatch, dict[str, StudentOutput], str], Optional[ExtraPositive]]


@dataclass(frozen=True)
class TrainData:
    """The cases one run trains and validates on (labels of unlabeled cases already dropped)."""

    labeled: tuple[Case, ...]
    unlabeled: tuple[Case, ...]
    val: tuple[Case, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class MethodExtras:
    terms: tuple[ExtraTerm, ...] = ()
    extra_positive_factory: Optional[ExtraPositiveFactory] = None


@dataclass(frozen=True)
class Method:
    students: tuple[str, ...]          # ('a',) or ('a', 'b')
    cross_teaching: bool
    contrastive: bool
    unlabeled: bool                    # whether batches have an unlabeled part
    # builds the method's own extra terms from the config, the loaded data and the run folder
    build_extras: Optional[Callable[[TrainConfig, TrainData, Path], MethodExtras]] = None


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
    best_score: float                  # mean validation Dice of cfg.select_student at the best step
    best_step: int
    seconds: float                     # wall time of this call
    history: list[dict] = field(default_factory=list)  # one record per validation


def poly_lr(base_lr: float, step: int, iterations: int, power: float) -> float:
    return base_lr * (1.0 - step / iterations) ** power


def load_train_data(dataset: Dataset, split: Split, labeled_set: str, with_unlabeled: bool = True) -> TrainData:
    """Load the labeled, unlabeled (unless not ``with_unlabeled``) and validation cases of
    ``split`` for ``labeled_set``."""
    labeled = tuple(ref.load() for ref in dataset.of_patients(split.labeled(labeled_set)))
    missing = [c.case_id for c in labeled if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: labeled set {labeled_set!r} has cases without a label: {missing}")
    unlabeled_refs = dataset.of_patients(split.unlabeled(labeled_set)) if with_unlabeled else ()
    unlabeled = tuple(ref.load().with_label(None) for ref in unlabeled_refs)
    val = tuple(ref.load() for ref in dataset.of_patients(split.val))
    missing = [c.case_id for c in val if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: validation cases without a label: {missing}")
    return TrainData(labeled, unlabeled, val, tuple(dataset.class_names))


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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _term_name(term: object, index: int) -> str:
    return str(getattr(term, "name", f"extra{index}"))


def _check_sizes(cfg: TrainConfig, students: Sequence[str]) -> None:
    h, w = cfg.image_size
    for name in students:
        sc = cfg.student_a if name == "a" else cfg.student_b
        side = 32 if sc.kind == "swin" else 2 ** (len(sc.widths) - 1)
        if h % side or w % side or (sc.kind == "swin" and h * w < 2 * 32 * 32):
            raise ValueError(f"image_size {cfg.image_size} must be divisible by {side} for student {name} ({sc.kind})"
                             + (" and larger than 32x32" if sc.kind == "swin" else ""))


def validate(students: Mapping[str, nn.Module], cases: Sequence[Case], cfg: TrainConfig,
             class_names: Sequence[str]) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Mean 3D Dice and HD95 over classes, then cases, per student, and Dice per class; also
    each student's label map ``(Z, Y, X)`` of the first case (for overlays)."""
    scores: dict[str, dict[str, float]] = {}
    first: dict[str, np.ndarray] = {}
    n = len(class_names)
    for name, model in students.items():
        per_case = []
        for i, case in enumerate(cases):
            pred = predict_labels(model, case.image, cfg.image_size, cfg.normalization, cfg.infer_batch)
            per_case.append(score_case(pred, case.label, case.spacing, n))
            if i == 0:
                first[name] = pred
        record = {
            "dice": float(np.mean([np.mean([s.dice for s in sc.values()]) for sc in per_case])),
            "hd95": float(np.mean([np.mean([s.hd95 for s in sc.values()]) for sc in per_case])),
        }
        for c in range(1, n):
            record[f"dice_{class_names[c]}"] = float(np.mean([sc[c].dice for sc in per_case]))
        scores[name] = record
    return scores, first


def _overlay(image_hw: np.ndarray, label_hw: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB ``(3, H, W)`` in [0, 1]: the image in grey with the label's classes tinted."""
    lo, hi = np.percentile(image_hw, [1, 99])
    grey = np.clip((image_hw - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[None], 3, axis=0)
    palette = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, .5, 0], [.5, 0, 1]])
    for c in range(1, num_classes):
        mask = label_hw == c
        rgb[:, mask] = 0.5 * rgb[:, mask] + 0.5 * palette[(c - 1) % len(palette)][:, None]
    return rgb.astype(np.float32)


def train(
    cfg: TrainConfig,
    dataset: Dataset,
    split: Split,
    extra_terms: Sequence[ExtraTerm] = (),
    extra_positive_factory: Optional[ExtraPositiveFactory] = None,
    *,
    methods: Mapping[str, Method] = SEG_METHODS,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.method`` on ``dataset`` / ``split`` into ``cfg.out_dir``.

    ``extra_terms`` and ``extra_positive_factory`` add to what the method's own
    ``build_extras`` gives. With ``resume`` the run continues from ``last.pt`` and must have
    the same configuration; without it, a folder that already holds a checkpoint is refused.
    """
    started = time.perf_counter()
    if cfg.method not in methods:
        raise ValueError(f"unknown method {cfg.method!r}; known: {sorted(methods)}")
    method = methods[cfg.method]
    if cfg.select_student not in method.students:
        raise ValueError(f"select_student {cfg.select_student!r} is not a student of {cfg.method!r} {method.students}")
    _check_sizes(cfg, method.students)
    device = training_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    checkpoint = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"{last_path}: nothing to resume")
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=True)
        saved = from_dict(checkpoint["config"], type(cfg)(), where=str(last_path))
        changed = differences(saved, cfg)
        if changed:
            raise ValueError(f"{last_path}: cannot resume with a different configuration; changed: {changed}")
    elif last_path.exists():
        raise ValueError(f"{out_dir}: already holds a checkpoint; pass resume to continue it or choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")

    torch.manual_seed(cfg.seed)
    data = load_train_data(dataset, split, cfg.labeled, with_unlabeled=method.unlabeled)
    num_classes = len(data.class_names)
    extras = method.build_extras(cfg, data, out_dir) if method.build_extras else MethodExtras()
    terms = tuple(extras.terms) + tuple(extra_terms)
    factory = extra_positive_factory or extras.extra_positive_factory

    students = {n: build_student(cfg.student_a if n == "a" else cfg.student_b, num_classes).to(device)
                for n in method.students}
    optimizers = {n: _optimizer(cfg, m) for n, m in students.items()}
    sampler = SliceSampler(
        [prepare_volume(c, cfg.normalization) for c in data.labeled],
        [prepare_volume(c, cfg.normalization) for c in data.unlabeled],
        cfg.labeled_batch,
        cfg.unlabeled_batch if method.unlabeled else 0,
        cfg.image_size,
        cfg.augment,
        cfg.seed,
    )
    contrast_rng = torch.Generator().manual_seed(cfg.seed + 1)
    start, best_score, best_step, history = 0, -1.0, -1, []
    if checkpoint is not None:
        for n, m in students.items():
            m.load_state_dict(checkpoint["students"][n])
            optimizers[n].load_state_dict(checkpoint["optimizers"][n])
        sampler.load_state_dict(checkpoint["sampler"])
        contrast_rng.set_state(checkpoint["contrast_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        for i, term in enumerate(terms):
            if hasattr(term, "load_state_dict"):
                term.load_state_dict(checkpoint["terms"][_term_name(term, i)])
        start, best_score, best_step = int(checkpoint["step"]), float(checkpoint["best_score"]), int(checkpoint["best_step"])
        history = list(checkpoint["history"])

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
            "terms": {_term_name(t, i): t.state_dict() for i, t in enumerate(terms) if hasattr(t, "state_dict")},
            "best_score": best_score,
            "best_step": best_step,
            "history": history,
        }

    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start if start else None)
    rampup_steps = cfg.rampup_fraction * cfg.iterations
    for m in students.values():
        m.train()
    bar = tqdm(total=cfg.iterations, initial=start, desc=f"train {cfg.method}", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        for step in range(start, cfg.iterations):
            lr = poly_lr(cfg.lr, step, cfg.iterations, cfg.poly_power)
            for opt in optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr
            batch = sampler.next_batch()   # on the CPU: extra terms read its geometry there
            image = batch.image.to(device)
            outputs = {n: m(image) for n, m in students.items()}
            ramp = sigmoid_rampup(step, rampup_steps)
            losses = _method_losses(cfg, method, batch, outputs, ramp, contrast_rng, factory, step)
            for i, term in enumerate(terms):
                for n, value in term(step, batch, outputs).items():
                    losses[f"{n}/{_term_name(term, i)}"] = value
            total = sum(losses.values())
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            total.backward()
            for opt in optimizers.values():
                opt.step()
            detached = {n: StudentOutput(o.logits.detach(), o.features.detach(), o.embedding.detach()) for n, o in outputs.items()}
            for term in terms:
                if hasattr(term, "after_step"):
                    term.after_step(step, batch, detached)

            done = step + 1
            for key, value in losses.items():
                writer.add_scalar(f"loss/{key}", float(value.detach()), done)
            writer.add_scalar("loss/total", float(total.detach()), done)
            writer.add_scalar("lr", lr, done)
            writer.add_scalar("rampup", ramp, done)
            bar.update(1)
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")

            if data.val and (done % cfg.val_every == 0 or done == cfg.iterations):
                scores, first_preds = validate(students, data.val, cfg, data.class_names)
                for n, record in scores.items():
                    for key, value in record.items():
                        writer.add_scalar(f"val_{n}/{key}", value, done)
                history.append({"step": done, **{f"{n}_{k}": v for n, r in scores.items() for k, v in r.items()}})
                if cfg.overlays:
                    _write_overlays(writer, data.val[0], first_preds, num_classes, done)
                if scores[cfg.select_student]["dice"] > best_score:
                    best_score, best_step = scores[cfg.select_student]["dice"], done
                    _atomic_save(snapshot(done), best_path)
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                _atomic_save(snapshot(done), last_path)
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


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'sgd' or 'adamw'")


def _method_losses(
    cfg: TrainConfig,
    method: Method,
    batch: SliceBatch,
    outputs: dict[str, StudentOutput],
    ramp: float,
    contrast_rng: torch.Generator,
    factory: Optional[ExtraPositiveFactory],
    step: int,
) -> dict[str, torch.Tensor]:
    """The base losses of ``method`` for one batch, weighted, keyed ``'<student>/<loss>'``.
    ``batch`` is on the CPU, ``outputs`` on the students' device."""
    nl = batch.num_labeled
    device = next(iter(outputs.values())).logits.device
    label, is_labeled = batch.label.to(device), batch.is_labeled.to(device)
    losses: dict[str, torch.Tensor] = {}
    for n, out in outputs.items():
        losses[f"{n}/sup"] = supervised_loss(out.logits[:nl], label[:nl])
    names = list(outputs)
    teacher = {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}  # the other student (or itself)
    if method.cross_teaching and batch.image.shape[0] > nl:
        w = cfg.cps_weight * ramp
        for n in names:
            unl = cross_teaching_loss(outputs[n].logits[nl:], outputs[teacher[n]].logits[nl:], cfg.cps_loss)
            losses[f"{n}/cps"] = w * unl
    if method.contrastive:
        parts = []
        labeled_rows = is_labeled[:, None, None]
        for n in names:
            probs = torch.softmax(outputs[teacher[n]].logits.detach(), dim=1)
            conf, pseudo = probs.max(dim=1)
            classes = torch.where(labeled_rows, label, pseudo)
            confidence = torch.where(labeled_rows, torch.ones_like(conf), conf)
            extra = factory(step, batch, outputs, n) if factory is not None else None
            parts.append(ContrastPart(outputs[n].embedding, classes, confidence, extra))
        losses["joint/cl"] = cfg.cl_weight * ramp * pixel_contrastive_loss(parts, cfg.contrast, contrast_rng)
    return losses


def _write_overlays(writer: SummaryWriter, case: Case, predictions: Mapping[str, np.ndarray], num_classes: int, step: int) -> None:
    """Middle slice of ``case``: ground truth and each student's prediction over the image."""
    z = case.shape[0] // 2
    writer.add_image("overlay/truth", _overlay(case.image[z], case.label[z], num_classes), step)
    for n, pred in predictions.items():
        writer.add_image(f"overlay/{n}", _overlay(case.image[z], pred[z], num_classes), step)
