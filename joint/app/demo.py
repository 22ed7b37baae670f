"""The main job, ``cctr demo``: the whole CCT-R pipeline on the embedded phantom, as small stages.

1. generate the phantom (:func:`seg.data.phantom.write_phantom`) into ``OUT/data``;
2. pretrain the learned registration net on the split's training volumes into ``OUT/reg``;
3. train ``cctr`` (RSL + REPS) with ``learned:OUT/reg/best.pt`` into ``OUT/seg``;
4. predict the test volumes with student A into ``OUT/predictions`` (NIfTI, input affine/header);
5. score them in 3D (``OUT/scores.csv``), next to the registration-only atlas baseline on the
   same volumes (``OUT/registration-only``) and the registration Dice of the training pairs
   that guided RSL/REPS (``OUT/registration_dice.json``: learned against identity);
6. write ``OUT/report.md`` and the figures ``OUT/figures/overlays.png`` (image / truth /
   prediction / warped atlas label) and ``OUT/figures/curves.png`` (read back from the
   runs' TensorBoard logs, which stay in ``OUT/reg/tb`` and ``OUT/seg/tb``).

Every expensive stage skips what is done: the phantom, the two trainings (an interrupted one
resumes from its ``last.pt``), each prediction file, and every Field (disk cache
``OUT/reg-cache``). Scoring and the report are cheap and always redone. ``OUT/demo.yaml``
holds the run's :class:`DemoConfig`; a folder made with another configuration is refused.

The defaults finish end to end well within 15 minutes on a shared 2-core CPU (one torch thread).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from joint.methods import (
    JointConfig,
    PropagationResult,
    as_joint_config,
    oracle_config,
    pair_dice,
    registration_only,
    train_joint,
)
from joint.oracle import RegistrationOracle
from reg.checkpoint import read_checkpoint
from reg.config import RegConfig
from reg.config import TrainConfig as RegTrainConfig
from reg.train import Volume
from reg.train import train as train_registration
from seg.config import differences, load_config, preset, save_config
from seg.data.case import Case, CaseError
from seg.data.dataset import Dataset
from seg.data.nifti import read_nifti, write_nifti
from seg.data.phantom import PhantomConfig, write_phantom
from seg.data.readers import open_dataset
from seg.data.split import Split
from seg.inference import load_students
from seg.metrics import ClassScore, score_case
from seg.report import (
    Summary,
    summarize,
    summary_markdown,
    write_scores_csv,
    write_text_atomic,
)

DEMO_FILE = "demo.yaml"
REFERENCE_BACKEND = "identity"   # what the learned registration is compared against in the report


@dataclass(frozen=True)
class DemoConfig:
    """Everything ``cctr demo`` runs with; ``--set`` addresses it with dots (``seg.iterations=300``,
    ``reg.train.steps=100``, ``phantom.matrix=[96,128]``). ``seg.method`` is trained with the
    learned backend; ``seg.out_dir``, ``seg.reg_backend``, ``seg.reg_cache`` and ``seg.labeled``
    are set by the pipeline."""

    patients: int = 16
    seed: int = 0                     # the phantom's; --seed also sets reg.train.seed and seg.seed
    labeled: str = "1"                # labeled set of the phantom's split
    phantom: PhantomConfig = PhantomConfig()
    # Sized for <= 15 minutes on this project's shared 2-core CPU with one torch thread (the
    # command's default): measured 6.3 min end to end at load average 0.0-1.5; training steps
    # ran only ~15% slower at load 3-4 (reg 0.6 s/step, cctr 0.65 s/step against 0.5 / 0.56).
    reg: RegConfig = RegConfig(train=RegTrainConfig(steps=150, val_every=50, val_pairs=8, log_every=5,
                                                    image_every=50))
    seg: JointConfig = replace(as_joint_config(preset("cpu-small")), method="cctr", iterations=500, val_every=100,
                               checkpoint_every=100)
    overlay_rows: int = 4             # test slices in the qualitative figure
    student: str = "a"                # the student that predicts the test volumes


@dataclass(frozen=True)
class DemoPaths:
    out: Path

    @property
    def config(self) -> Path:
        return self.out / DEMO_FILE

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def reg(self) -> Path:
        return self.out / "reg"

    @property
    def seg(self) -> Path:
        return self.out / "seg"

    @property
    def reg_cache(self) -> Path:
        return self.out / "reg-cache"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def registration_only(self) -> Path:
        return self.out / "registration-only"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def timings(self) -> Path:
        return self.out / "timings.json"

    @property
    def registration_dice(self) -> Path:
        return self.out / "registration_dice.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"


@dataclass(frozen=True)
class DemoResult:
    paths: DemoPaths
    summary: Summary                   # student predictions on the test volumes
    baseline: Summary                  # registration-only on the same volumes
    guidance: dict[str, list[float]]   # backend spec -> Dice of each training pair it guided
    seconds: dict[str, float]          # stage -> wall seconds when it last ran


def with_seed(cfg: DemoConfig, seed: int) -> DemoConfig:
    """``cfg`` with one seed for the phantom, the registration pretraining and the segmentation."""
    reg = replace(cfg.reg, train=replace(cfg.reg.train, seed=seed))
    return replace(cfg, seed=seed, reg=reg, seg=replace(cfg.seg, seed=seed))


def check_config(cfg: DemoConfig) -> None:
    """Refuse options the pipeline cannot run, before any work."""
    if cfg.patients < 4:
        raise ValueError(f"the demo needs at least 4 phantom patients (train, val, test and an unlabeled one), got {cfg.patients}")
    if cfg.overlay_rows < 1:
        raise ValueError(f"overlay_rows must be >= 1, got {cfg.overlay_rows}")
    if cfg.student not in ("a", "b"):
        raise ValueError(f"student must be 'a' or 'b', got {cfg.student!r}")


def claim_folder(paths: DemoPaths, cfg: DemoConfig) -> None:
    """Record ``cfg`` in the run folder, or check it is the one already recorded there."""
    if paths.config.is_file():
        changed = differences(load_config(paths.config, DemoConfig()), cfg)
        if changed:
            raise ValueError(f"{paths.out}: holds a demo run made with other options (changed: {changed}); "
                             "run with the same options to resume it, or choose another --out")
        return
    if paths.out.is_dir() and any(paths.out.iterdir()):
        raise ValueError(f"{paths.out}: folder is not empty and holds no {DEMO_FILE}; choose another --out")
    save_config(cfg, paths.config)


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def record_time(paths: DemoPaths, stage: str, seconds: float, add: bool = False) -> None:
    """Store a stage's wall seconds in ``timings.json``; with ``add``, on top of what an
    interrupted earlier run spent on it."""
    times = _read_json(paths.timings)
    times[stage] = round(seconds + (times.get(stage, 0.0) if add else 0.0), 1)
    _write_json(paths.timings, times)


# -- stages ----------------------------------------------------------------------------------------

def make_phantom(paths: DemoPaths, cfg: DemoConfig, progress: bool = True) -> Dataset:
    """The phantom dataset of ``cfg`` in ``paths.data``, generated unless already there."""
    if not (paths.data / "dataset.json").is_file():
        started = time.perf_counter()
        write_phantom(paths.data, cfg.patients, seed=cfg.seed, cfg=cfg.phantom, progress=None if progress else False)
        record_time(paths, "phantom", time.perf_counter() - started)
    return open_dataset(paths.data)


def registration_volumes(dataset: Dataset, patients: Sequence[str], with_labels: bool) -> list[Volume]:
    out = []
    for ref in dataset.of_patients(patients):
        case = ref.load()
        out.append(Volume(case.case_id, case.patient_id, case.image, case.spacing, case.label if with_labels else None))
    return out


def registration_done(cfg: RegConfig, out_dir: Path) -> bool:
    last = Path(out_dir) / "last.pt"
    return last.is_file() and int(read_checkpoint(last)["step"]) >= cfg.train.steps


def pretrain_registration(dataset: Dataset, split: Split, cfg: RegConfig, out_dir: Path, labeled: str) -> Path:
    """Train the registration net on ``split``'s training volumes (labels only of the ``labeled``
    set and only when ``cfg.loss.dice_weight > 0``), validating on its validation volumes.

    A finished run in ``out_dir`` is reused, an interrupted one resumed. Returns the checkpoint
    the learned backend should load (``best.pt``, else ``last.pt``)."""
    out_dir = Path(out_dir)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if not registration_done(cfg, out_dir):
        chosen = set(split.labeled(labeled)) if cfg.loss.dice_weight > 0 else set()
        train_vols = [v for p in split.train for v in registration_volumes(dataset, [p], p in chosen)]
        val_vols = registration_volumes(dataset, split.val, with_labels=True)
        train_registration(cfg, train_vols, val_vols, len(dataset.class_names), out_dir, resume=last.is_file())
    return best if best.is_file() else last


def segmentation_config(cfg: DemoConfig, paths: DemoPaths, reg_checkpoint: Path) -> JointConfig:
    """The demo's segmentation config with the pipeline's own paths and backend filled in."""
    return replace(cfg.seg, labeled=cfg.labeled, out_dir=str(paths.seg), reg_backend=f"learned:{reg_checkpoint}",
                   reg_cache=str(paths.reg_cache))


def segmentation_done(cfg: JointConfig) -> bool:
    last = Path(cfg.out_dir) / "last.pt"
    return last.is_file() and int(torch.load(last, map_location="cpu", weights_only=True)["step"]) >= cfg.iterations


def train_segmentation(cfg: JointConfig, dataset: Dataset, split: Split, progress: bool = True) -> Path:
    """Train ``cfg`` unless its run folder already holds the finished run (an interrupted one
    resumes). Returns the checkpoint to predict with (``best.pt``, else ``last.pt``)."""
    out_dir = Path(cfg.out_dir)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if not segmentation_done(cfg):
        train_joint(cfg, dataset, split, resume=last.is_file(), progress=progress)
    return best if best.is_file() else last


def predict_cases(checkpoint: Path, cases: Sequence[Case], out_dir: Path, student: str = "a",
                  progress: bool = True) -> dict[str, np.ndarray]:
    """uint8 ``(Z, Y, X)`` prediction of each case, written to ``out_dir/<case>.nii.gz`` with
    the case's affine and header; a file already there is read back instead of recomputed."""
    trained = None
    out = {}
    for case in tqdm(cases, desc="predict", unit="volume", disable=None if progress else True):
        path = Path(out_dir) / f"{case.case_id}.nii.gz"
        if path.is_file():
            out[case.case_id] = read_nifti(path)[0].astype(np.uint8)
            continue
        trained = trained or load_students(checkpoint)
        out[case.case_id] = trained.predict(case.image, student)
        write_nifti(path, out[case.case_id], case.affine, case.header)
    return out


def score_cases(predictions: Mapping[str, np.ndarray], cases: Sequence[Case]) -> dict[str, dict[int, ClassScore]]:
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        raise CaseError(f"cases without a reference label cannot be scored: {missing}")
    return {c.case_id: score_case(predictions[c.case_id], c.label, c.spacing, c.num_classes) for c in cases}


def guidance_dice(cfg: JointConfig, dataset: Dataset, split: Split, specs: Sequence[str],
                  progress: bool = True) -> dict[str, list[float]]:
    """Per backend, the Dice of every (unlabeled training volume, atlas) pair that the run's atlas
    policy can use: how good the registration guidance of RSL and REPS was. Scored against
    the phantom's labels of those volumes, which training never saw."""
    atlases = [ref.load() for ref in dataset.of_patients(split.labeled(cfg.labeled))]
    targets = [ref.load() for ref in dataset.of_patients(split.unlabeled(cfg.labeled))]
    references = {t.case_id: t.label for t in targets if t.label is not None}
    out = {}
    for spec in tqdm(specs, desc="registration Dice", unit="backend", disable=None if progress else True):
        # identity is instant; caching its Fields on disk would only cost space
        cache = "" if spec == REFERENCE_BACKEND else cfg.reg_cache
        oracle = RegistrationOracle(atlases, [t.with_label(None) for t in targets],
                                    oracle_config(replace(cfg, reg_backend=spec, reg_cache=cache)))
        out[spec] = [round(d, 6) for d in pair_dice(oracle, references).values()]
    return out


def registration_baseline(cfg: JointConfig, dataset: Dataset, split: Split, out_dir: Path,
                          progress: bool = True) -> PropagationResult:
    """The atlas baseline with the same backend, on the test volumes: labels of the labeled set
    propagated by registration alone (Fields come from the disk cache on a re-run)."""
    baseline = replace(cfg, method="registration-only", eval_subset="test", out_dir=str(out_dir))
    return registration_only(baseline, dataset, split, progress=progress)


# -- figures ---------------------------------------------------------------------------------------

CLASS_COLOURS = ((0.90, 0.20, 0.20), (0.20, 0.80, 0.30), (0.25, 0.45, 1.00), (1.00, 0.85, 0.10),
                 (0.85, 0.30, 0.90), (0.10, 0.85, 0.85), (1.00, 0.55, 0.10), (0.55, 0.35, 0.15))


def overlay_rgb(image_yx: np.ndarray, label_yx: Optional[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """``(Y, X, 3)`` float in [0, 1]: the image in grey (1st-99th percentile window) with each
    foreground class of ``label_yx`` tinted in its colour."""
    lo, hi = np.percentile(image_yx, [1, 99])
    grey = np.clip((image_yx - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if label_yx is not None:
        for c in np.unique(label_yx):
            if c == 0:
                continue
            mask = label_yx == c
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(CLASS_COLOURS[(int(c) - 1) % len(CLASS_COLOURS)])
    return rgb


def overlay_slices(cases: Sequence[Case], rows: int) -> list[tuple[int, int]]:
    """``rows`` (case index, slice) picks: cases in turn, each pass taking the slice with the
    next-largest labeled area of that case, so the heart is in view."""
    picks: list[tuple[int, int]] = []
    ranked = [np.argsort(-(c.label > 0).sum(axis=(1, 2)), kind="stable") if c.label is not None else np.arange(c.shape[0])
              for c in cases]
    for row in range(rows):
        i = row % len(cases)
        order = ranked[i]
        picks.append((i, int(order[(row // len(cases)) % len(order)])))
    return picks


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_overlays(path: Path, cases: Sequence[Case], predictions: Mapping[str, np.ndarray],
                  warped: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[int, ClassScore]],
                  rows: int, prediction_title: str = "prediction") -> Path:
    """A grid of test slices, one per row: image | truth | prediction | warped atlas label."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    picks = overlay_slices(cases, rows)
    fig = Figure(figsize=(10, 2.8 * len(picks) + 0.6))
    axes = fig.subplots(len(picks), 4, squeeze=False)
    for r, (i, z) in enumerate(picks):
        case = cases[i]
        aspect = case.spacing[1] / case.spacing[2]
        dice = np.mean([s.dice for s in scores[case.case_id].values()])
        panels = [(None, f"{case.case_id} z={z}"), (case.label, "truth"),
                  (predictions[case.case_id], f"{prediction_title} (Dice {dice:.3f})"),
                  (warped[case.case_id], "warped atlas label")]
        for ax, (label, title) in zip(axes[r], panels):
            ax.imshow(overlay_rgb(case.image[z], None if label is None else label[z]), aspect=aspect,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    names = cases[0].class_names[1:]
    fig.legend(handles=[Patch(color=CLASS_COLOURS[k % len(CLASS_COLOURS)], label=n) for k, n in enumerate(names)],
               loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (2.8 * len(picks) + 0.6), 1, 1))
    return save_figure(fig, path)


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series of a TensorBoard log folder: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=np.float64))
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def plot_curves(path: Path, reg_log: Path, seg_log: Path, student: str = "a") -> Path:
    """Training curves from the TensorBoard logs: registration loss and validation Dice;
    segmentation losses of ``student`` (and the joint contrastive one); validation Dice."""
    from matplotlib.figure import Figure

    reg, seg = read_scalars(reg_log), read_scalars(seg_log)
    fig = Figure(figsize=(15, 4))
    ax_reg, ax_loss, ax_val = fig.subplots(1, 3)
    if "loss/total" in reg:
        steps, values = reg["loss/total"]
        ax_reg.plot(steps, values, color="tab:blue", alpha=0.3)
        ax_reg.plot(steps, smooth(values, max(1, len(values) // 10)), color="tab:blue")
    ax_reg.set_title("registration pretraining")
    ax_reg.set_xlabel("step")
    ax_reg.set_ylabel("similarity + smoothness loss")
    if "val/dice" in reg:
        twin = ax_reg.twinx()
        twin.plot(*reg["val/dice"], "o-", color="tab:red", label="val Dice")
        twin.set_ylabel("validation Dice of warped labels", color="tab:red")
    for tag in sorted(t for t in seg if t.startswith((f"loss/{student}/", "loss/joint/")) or t == "loss/total"):
        steps, values = seg[tag]
        ax_loss.plot(steps, smooth(values, max(1, len(values) // 40)), label=tag[len("loss/"):])
    ax_loss.set_title(f"segmentation losses (student {student}, smoothed)")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    for tag in sorted(t for t in seg if t.startswith("val_") and t.endswith("/dice")):
        ax_val.plot(*seg[tag], "o-", label=f"student {tag[4:-5]}")
    ax_val.set_title("validation 3D Dice (mean over classes)")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylim(0, 1)
    if ax_val.has_data():
        ax_val.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# -- report ----------------------------------------------------------------------------------------

def guidance_table(guidance: Mapping[str, Sequence[float]]) -> str:
    lines = ["| backend | pairs | mean Dice ± std | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for spec, values in guidance.items():
        v = np.asarray(values, dtype=float)
        cells = (f"{v.mean():.4f} ± {v.std():.4f} | {v.min():.4f} | {v.max():.4f}" if v.size else "n/a | n/a | n/a")
        lines.append(f"| `{spec}` | {v.size} | {cells} |")
    return "\n".join(lines) + "\n"


def report_markdown(cfg: DemoConfig, seg_cfg: JointConfig, split: Split, reg_checkpoint: Path, seg_checkpoint: Path,
                    summary: Summary, baseline: Summary, guidance: Mapping[str, Sequence[float]],
                    seconds: Mapping[str, float], paths: DemoPaths) -> str:
    """``report.md``: what ran, the 3D scores, the registration guidance, stage times, files."""
    reg_state = read_checkpoint(reg_checkpoint)
    seg_state = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)
    labeled = split.labeled(cfg.labeled)

    def rel(path: Path) -> str:
        return os.path.relpath(path, paths.out)

    lines = [
        "# cctr demo",
        "",
        (f"Phantom: {cfg.patients} patients (seed {cfg.seed}), ED and ES frames each. Split: "
         f"{len(split.train)} training patients ({len(labeled)} labeled, set {cfg.labeled!r}: {', '.join(labeled)}; "
         f"{len(split.train) - len(labeled)} unlabeled), {len(split.val)} validation, {len(split.test)} test "
         f"({summary.num_cases} test volumes)."),
        "",
        (f"Registration: the learned net pretrained for {cfg.reg.train.steps} steps on the training volumes "
         f"(`{rel(reg_checkpoint)}`, step {int(reg_state['step'])}, validation Dice of warped labels "
         f"{float(reg_state['best_score']):.4f})."),
        "",
        (f"Segmentation: method `{seg_cfg.method}` with backend `learned`, atlas policy `{seg_cfg.atlas_policy}`, "
         f"{seg_cfg.iterations} iterations at {seg_cfg.image_size[0]}x{seg_cfg.image_size[1]}; test predictions "
         f"by student {cfg.student} of `{rel(seg_checkpoint)}` (step {int(seg_state['step'])}, best validation "
         f"Dice {float(seg_state['best_score']):.4f})."),
        "",
        summary_markdown(summary, f"Test volumes, {seg_cfg.method} (student {cfg.student})"),
        summary_markdown(baseline, "Test volumes, registration-only (learned backend, same atlases)"),
        "## Registration guidance during training",
        "",
        ("Dice (mean over foreground classes) of each atlas label warped onto each unlabeled training "
         "volume, against that volume's phantom label (never used in training): the quality of the "
         "RSL pseudo-labels and REPS correspondences."),
        "",
        guidance_table({spec.replace(f"{paths.out}{os.sep}", ""): v for spec, v in guidance.items()}),
        "## Stage times (wall seconds, when each stage last ran)",
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *[f"| {stage} | {s:.1f} |" for stage, s in seconds.items()],
        f"| **total** | {sum(seconds.values()):.1f} |",
        "",
        "## Files",
        "",
        (f"- `{rel(paths.predictions)}/`: test predictions (NIfTI, the input's affine and header); "
         "`scores.csv`: per volume and class Dice, HD95, ASD"),
        f"- `{rel(paths.registration_only)}/`: the registration-only predictions and scores",
        "- `figures/overlays.png`: image / truth / prediction / warped atlas label on test slices",
        "- `figures/curves.png`: training curves",
        f"- TensorBoard logs: `tensorboard --logdir {paths.out}` (`reg/tb`, `seg/tb`)",
        "",
        "![overlays](figures/overlays.png)",
        "",
        "![curves](figures/curves.png)",
        "",
    ]
    return "\n".join(lines)


def run_demo(cfg: DemoConfig, out: Path, progress: bool = True) -> DemoResult:
    """Run (or resume) the whole pipeline into ``out``; see the module docstring."""
    check_config(cfg)
    paths = DemoPaths(Path(out).resolve())
    paths.out.mkdir(parents=True, exist_ok=True)
    claim_folder(paths, cfg)

    dataset = make_phantom(paths, cfg, progress)
    split = dataset.default_split
    if split is None:
        raise CaseError(f"{paths.data}: the phantom folder has no split.json")

    started, ran = time.perf_counter(), not registration_done(cfg.reg, paths.reg)
    reg_checkpoint = pretrain_registration(dataset, split, cfg.reg, paths.reg, cfg.labeled)
    if ran:
        record_time(paths, "registration pretraining", time.perf_counter() - started, add=True)

    seg_cfg = segmentation_config(cfg, paths, reg_checkpoint)
    started, ran = time.perf_counter(), not segmentation_done(seg_cfg)
    seg_checkpoint = train_segmentation(seg_cfg, dataset, split, progress)
    if ran:
        record_time(paths, f"{seg_cfg.method} training", time.perf_counter() - started, add=True)

    started = time.perf_counter()
    test_cases = [ref.load() for ref in dataset.of_patients(split.test)]
    predictions = predict_cases(seg_checkpoint, test_cases, paths.predictions, cfg.student, progress)
    scores = score_cases(predictions, test_cases)
    summary = summarize(scores, dataset.class_names)
    write_scores_csv(paths.out / "scores.csv", scores, dataset.class_names)
    baseline = registration_baseline(seg_cfg, dataset, split, paths.registration_only, progress)
    guidance = _read_json(paths.registration_dice)
    if not guidance:
        guidance = guidance_dice(seg_cfg, dataset, split, (seg_cfg.reg_backend, REFERENCE_BACKEND), progress)
        _write_json(paths.registration_dice, guidance)
    warped = {cid: read_nifti(p)[0].astype(np.uint8) for cid, p in baseline.predictions.items()}
    plot_overlays(paths.figures / "overlays.png", test_cases, predictions, warped, scores, cfg.overlay_rows,
                  f"{seg_cfg.method} {cfg.student.upper()}")
    plot_curves(paths.figures / "curves.png", paths.reg / "tb", paths.seg / "tb", cfg.student)
    record_time(paths, "evaluation and report", time.perf_counter() - started)

    seconds = _read_json(paths.timings)
    write_text_atomic(paths.report, report_markdown(cfg, seg_cfg, split, reg_checkpoint, seg_checkpoint, summary,
                                                    baseline.summary, guidance, seconds, paths))
    return DemoResult(paths, summary, baseline.summary, guidance, seconds)


