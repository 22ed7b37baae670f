"""The main job, ``cctr demo``: the whole CCT-R pipeline on the embedded phantom, as small stages.

1. generate the phantom (:func:`seg.data.phantom.write_phantom`) into ``OUT/data``;
2. plan from the data (:func:`joint.plan.plan_for`, ``OUT/data/cctr_plan.json``) and pretrain the learned
   registration net on the planned grid, on the split's training volumes, into ``OUT/reg``;
3. train ``cctr`` (RSL + REPS) with ``learned:OUT/reg/best.pt`` into ``OUT/seg``, and the
   ``supervised`` baseline (student A on the labeled slices only, same iterations; cheap)
   into ``OUT/supervised``;
4. predict the test volumes with student A of each into ``OUT/predictions`` and
   ``OUT/supervised-predictions`` (NIfTI, input affine/header);
5. score them in 3D (``OUT/scores.csv``, ``OUT/supervised-scores.csv``), next to the
   registration-only atlas baseline on the same volumes (``OUT/registration-only``) and the
   registration Dice of the training pairs that guided RSL/REPS
   (``OUT/registration_dice.json``: learned against identity), so the report shows what the
   unlabeled volumes and the registration add over the labeled ones alone;
6. ask the trained run which unlabeled patient to label next (``cctr suggest``, into
   ``OUT/suggest``) and estimate each test prediction's Dice from the students' agreement and
   the atlas fit (quality control, ``OUT/qc.csv``), checked against the true Dice;
7. write ``OUT/report.md`` and the figures ``OUT/figures/overlays.png`` (image / truth /
   prediction / warped atlas label) and ``OUT/figures/curves.png`` (read back from the
   runs' TensorBoard logs, which stay in ``OUT/reg/tb`` and ``OUT/seg/tb``).

Every expensive stage skips what is done: the phantom, the three trainings (an interrupted one
resumes from its ``last.pt``), each prediction file, the suggestion and the quality control,
and every Field (disk cache ``OUT/reg-cache``). Scoring and the report are cheap and always redone. ``OUT/demo.yaml``
holds the run's :class:`DemoConfig`; a folder made with another configuration is refused.

The defaults finish end to end well within 15 minutes on a shared 2-core CPU (one torch thread).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from cctr.joint.app.figures import plot_curves, plot_overlays
from cctr.joint.app.quality import scored_qc
from cctr.joint.app.suggestion import MARKER as SUGGESTION_MARKER
from cctr.joint.app.suggestion import suggest, write_suggestion
from cctr.joint.app.stages import (
    REFERENCE_BACKEND,
    guidance_dice,
    predict_cases,
    pretrain_registration,
    registration_baseline,
    registration_done,
    score_cases,
    segmentation_done,
    train_segmentation,
)
from cctr.joint.config import JointConfig, as_joint_config, with_backend
from cctr.joint.methods import run_backend
from cctr.joint.qc import QCConfig, ScanQC, check_qc, read_qc_csv, write_qc_csv
from cctr.joint.suggest import SuggestConfig
from cctr.joint.plan import format_plan, frontend, plan_for, reg_config
from cctr.reg.checkpoint import read_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.config import TrainConfig as RegTrainConfig
from cctr.seg.atomic import write_json, write_text_atomic
from cctr.seg.config import differences, load_config, preset, save_config
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.nifti import read_nifti
from cctr.seg.data.phantom import write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import Split
from cctr.seg.inference import load_students
from cctr.seg.metrics import ClassScore
from cctr.seg.options import option
from cctr.seg.report import Summary, summarize, summary_markdown, write_scores_csv

DEMO_FILE = "demo.yaml"


@dataclass(frozen=True)
class DemoConfig:
    """Everything ``cctr demo`` runs with; ``--set`` addresses it with dots (``seg.iterations=300``,
    ``reg.train.steps=100``). ``seg.method`` is trained with the learned backend, and ``supervised``
    (student A on the labeled slices only) with the same options beside it; ``seg.out_dir``,
    ``seg.oracle.backend``, ``seg.oracle.cache`` and ``seg.labeled`` are set by the pipeline.
    Registration pretrains on the grid, pre-alignment and NCC window planned from the phantom."""

    patients: int = option(16, "phantom patients to generate")
    seed: int = option(0, "seed of the phantom; --seed also sets reg.train.seed and seg.seed")
    labeled: str = option("1", "labeled set of the phantom's split")
    # Sized for <= 15 minutes on this project's shared 2-core CPU with one torch thread (the
    # command's default): measured 6.3 min end to end at load average 0.0-1.5; training steps
    # ran only ~15% slower at load 3-4 (reg 0.6 s/step, cctr 0.65 s/step against 0.5 / 0.56).
    reg: RegConfig = RegConfig(train=RegTrainConfig(steps=150, val_every=50, val_pairs=8))
    seg: JointConfig = replace(as_joint_config(preset("cpu-small")), method="cctr+", iterations=500, val_every=100)


# test slices in the qualitative figure
OVERLAY_ROWS = 4
# why the demo trains cctr+ rather than the paper's cctr: the validation figure it was chosen on
WHY_CCTR_PLUS = ("The demo trains `cctr+`, this project's extension of the paper's `cctr`: on the benchmark's "
                 "cardiac phantom it scored higher on the validation volumes, where choices are made "
                 "(+0.037 mean Dice, 95 % interval [+0.018, +0.060], 3 labeled draws x 2 seeds; docs/RESULTS.md).")


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
    def baseline_seg(self) -> Path:
        return self.out / "supervised"

    @property
    def baseline_predictions(self) -> Path:
        return self.out / "supervised-predictions"

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

    @property
    def suggest(self) -> Path:
        return self.out / "suggest"

    @property
    def qc(self) -> Path:
        return self.out / "qc.csv"


@dataclass(frozen=True)
class DemoResult:
    paths: DemoPaths
    summary: Summary                   # student predictions on the test volumes
    baseline: Summary                  # registration-only on the same volumes
    supervised: Summary | None         # the 'supervised' baseline on the same volumes (None: not trained)
    guidance: dict[str, list[float]]   # backend spec -> Dice of each training pair it guided
    seconds: dict[str, float]          # stage -> wall seconds when it last ran
    suggestion: Mapping = None  # type: ignore[assignment]   # what OUT/suggest chose (its suggestion.json)
    qc: Mapping[str, ScanQC] = None  # type: ignore[assignment]  # test volume -> its quality control


def with_seed(cfg: DemoConfig, seed: int) -> DemoConfig:
    """``cfg`` with one seed for the phantom, the registration pretraining and the segmentation."""
    reg = replace(cfg.reg, train=replace(cfg.reg.train, seed=seed))
    return replace(cfg, seed=seed, reg=reg, seg=replace(cfg.seg, seed=seed))


def check_config(cfg: DemoConfig) -> None:
    """Refuse options the pipeline cannot run, before any work."""
    if cfg.patients < 4:
        raise ValueError(f"the demo needs at least 4 phantom patients (train, val, test and an unlabeled one), got {cfg.patients}")


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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def record_time(paths: DemoPaths, stage: str, seconds: float, add: bool = False) -> None:
    """Store a stage's wall seconds in ``timings.json``; with ``add``, on top of what an
    interrupted earlier run spent on it."""
    times = _read_json(paths.timings)
    times[stage] = round(seconds + (times.get(stage, 0.0) if add else 0.0), 1)
    write_json(paths.timings, times)


# -- stages ----------------------------------------------------------------------------------------

def make_phantom(paths: DemoPaths, cfg: DemoConfig, progress: bool = True) -> Dataset:
    """The phantom dataset of ``cfg`` in ``paths.data``, generated unless already there."""
    if not (paths.data / "dataset.json").is_file():
        started = time.perf_counter()
        write_phantom(paths.data, cfg.patients, seed=cfg.seed, progress=None if progress else False)
        record_time(paths, "phantom", time.perf_counter() - started)
    return open_dataset(paths.data)


def segmentation_config(cfg: DemoConfig, paths: DemoPaths, reg_checkpoint: Path) -> JointConfig:
    """The demo's segmentation config with the pipeline's own paths and backend filled in."""
    return replace(with_backend(cfg.seg, f"learned:{reg_checkpoint}", str(paths.reg_cache)), labeled=cfg.labeled,
                   out_dir=str(paths.seg))


def supervised_config(seg_cfg: JointConfig, paths: DemoPaths) -> JointConfig:
    """The supervised baseline: ``seg_cfg`` (same options, iterations, seed) as method
    ``supervised`` in its own run folder; it trains student A only and queries no registration."""
    return replace(seg_cfg, method="supervised", out_dir=str(paths.baseline_seg))


def suggestion_stage(paths: DemoPaths, seg_cfg: JointConfig, dataset: Dataset, split: Split, checkpoint: Path,
                     front: object, progress: bool = True) -> dict:
    """``cctr suggest`` on the trained run (one patient, the run's own registration) into
    ``OUT/suggest``, unless its marker is there; returns the marker (what was chosen)."""
    marker = paths.suggest / SUGGESTION_MARKER
    if not marker.is_file():
        trained = load_students(checkpoint)
        found = suggest(seg_cfg, checkpoint, dataset, split, seg_cfg.oracle.backend, SuggestConfig(k=1),
                        front, progress, trained)  # type: ignore[arg-type]
        write_suggestion(paths.suggest, found, paths.seg, dataset, trained)
    return json.loads(marker.read_text())


def qc_stage(paths: DemoPaths, seg_cfg: JointConfig, dataset: Dataset, split: Split, checkpoint: Path,
             test_cases: Sequence[Case], front: object, progress: bool = True) -> dict[str, ScanQC]:
    """The quality control of student A's test predictions (students' agreement and the fit of
    the run's atlases, warped by its registration) in ``OUT/qc.csv``, unless it is there."""
    if not paths.qc.is_file():
        atlases = [ref.load() for ref in dataset.of_patients(split.labeled(seg_cfg.labeled))]
        qc, _ = scored_qc(load_students(checkpoint), test_cases, atlases, run_backend(seg_cfg, front),  # type: ignore[arg-type]
                          seg_cfg.oracle, QCConfig(), progress)
        write_qc_csv(paths.qc, qc)
    return read_qc_csv(paths.qc)


# -- report ----------------------------------------------------------------------------------------

def guidance_table(guidance: Mapping[str, Sequence[float]]) -> str:
    lines = ["| backend | pairs | mean Dice ± std | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for spec, values in guidance.items():
        v = np.asarray(values, dtype=float)
        std = f" ± {v.std(ddof=1):.4f}" if v.size > 1 else ""
        cells = (f"{v.mean():.4f}{std} | {v.min():.4f} | {v.max():.4f}" if v.size else "n/a | n/a | n/a")
        lines.append(f"| `{spec}` | {v.size} | {cells} |")
    return "\n".join(lines) + "\n"


def _overall(summary: Summary, metric: str, digits: int) -> str:
    stat = summary.overall[metric]
    return f"{stat.mean:.{digits}f}" + ("" if math.isnan(stat.std) else f" ± {stat.std:.{digits}f}")


def comparison_table(rows: Sequence[tuple[str, str, Summary]]) -> str:
    """One line per (method, what it learns from, summary): overall Dice, HD95 and ASD."""
    lines = ["| method | learns from | Dice | HD95 (mm) | ASD (mm) |", "| --- | --- | ---: | ---: | ---: |"]
    for name, source, summary in rows:
        lines.append(f"| {name} | {source} | {_overall(summary, 'dice', 4)} | {_overall(summary, 'hd95', 2)} | "
                     f"{_overall(summary, 'asd', 2)} |")
    return "\n".join(lines) + "\n"


def _history(last_checkpoint: Path) -> list[dict]:
    """The validation records of a whole run (``best.pt`` holds them only up to its step)."""
    if not last_checkpoint.is_file():
        return []
    return list(torch.load(last_checkpoint, map_location="cpu", weights_only=True).get("history", []))


def gate_text(registration_json: Path, history: Sequence[Mapping[str, float]], student: str) -> str:
    """What the validation gate did in the run (METHOD.md part 6), from its ``registration.json``
    and validation ``history``: the registration's score and when RSL closed to ``student``."""
    gate = _read_json(registration_json).get("gate", {}) if registration_json.is_file() else {}
    if gate.get("mode", "none") == "none":
        why = f" ({gate['why']})" if "why" in gate else ""
        return f"The validation gate was off{why}: RSL and REPS taught both students throughout."
    key = f"gate_open_{student}"
    decisions = [(int(r["step"]), bool(r[key])) for r in history if key in r]
    score = gate.get("registration_val_dice")
    scored = f"{score:.4f}" if isinstance(score, float) else "re-measured at every validation"
    closed = [step for step, is_open in decisions if not is_open]
    if not closed:
        when = f"student {student} stayed below it, so it trained on RSL to the end"
    elif decisions[-1][1]:
        when = (f"student {student} reached it at step {closed[0]} but fell below again by the end, "
                "so RSL was reopened")
    else:
        last_open = max((step for step, is_open in decisions if is_open), default=0)
        first_shut = min(step for step in closed if step > last_open)
        when = f"student {student} passed it at step {first_shut} and trained without RSL from then on"
    return (f"The validation gate (`gate.mode={gate['mode']}`, gating RSL): the "
            f"registration scores {scored} Dice on the validation volumes; {when}.")


def suggestion_lines(paths: DemoPaths, marker: Mapping, top: int = 5) -> list[str]:
    """The report's section on what to label next, from ``OUT/suggest``."""
    with open(paths.suggest / "suggest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:top]
    table = ["| pick | patient | score | disagreement | atlas misfit | distance |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        table.append(f"| {r['pick']} | {r['patient']} | {float(r['score']):.3f} | "
                     + " | ".join(f"{float(r[k]):.3f}" if r[k] else "n/a"
                                  for k in ("disagreement", "atlas_misfit", "distance")) + " |")
    return ["## Which scan to label next (`cctr suggest`)", "",
            f"**label next: {', '.join(marker['chosen'])}**", "",
            ("Each unlabeled training patient, ranked by the weighted mean of the ranks of three components: the "
             "students' disagreement (1 - Dice(A, B)), the misfit of the best warped atlas label with the students, "
             "and the distance to the labeled scans under registration (`suggest/suggest.md` has the whole ranking "
             "and its check on the validation scans, `suggest/suggest.png` the candidates)."), "",
            *table, ""]


def qc_lines(qc: Mapping[str, ScanQC], scores: Mapping[str, Mapping[int, ClassScore]]) -> list[str]:
    """The report's quality-control section: each test volume's estimated Dice beside its true one."""
    truth = {case: float(np.mean([s.dice for s in per.values()])) for case, per in scores.items()}
    check = check_qc(qc, truth)
    lines = ["## Quality control of the test predictions", "",
             ("Estimated Dice (QC): the mean of the Dice between the two students' predictions and the Dice between "
              f"student A's prediction and the best-fitting warped atlas label. Flag: an estimate below "
              f"{QCConfig().threshold:g} or among the lowest {100 * QCConfig().fraction:g} % of the volumes. "
              f"Spearman of estimate and true Dice over the {check.scans} volumes: {check.spearman:.3f}."), "",
             "| volume | Dice | QC: estimated Dice | students' Dice | atlas fit | flag |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for case in sorted(qc, key=lambda c: qc[c].estimated_dice):
        q = qc[case]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"| {case} | {fmt(truth.get(case))} | {q.estimated_dice:.3f} | {fmt(q.students_dice)} | "
                     f"{fmt(q.atlas_fit)} | {'check' if q.flag else ''} |")
    return [*lines, ""]


def report_markdown(cfg: DemoConfig, seg_cfg: JointConfig, split: Split, reg_checkpoint: Path, seg_checkpoint: Path,
                    summary: Summary, baseline: Summary, guidance: Mapping[str, Sequence[float]],
                    seconds: Mapping[str, float], paths: DemoPaths, supervised: Summary | None = None,
                    supervised_checkpoint: Path | None = None, plan_text: str = "",
                    suggestion: Mapping | None = None, qc: Mapping[str, ScanQC] | None = None,
                    scores: Mapping[str, Mapping[int, ClassScore]] | None = None) -> str:
    """``report.md``: what ran, the 3D scores (with the supervised baseline beside the method
    when it was trained), the registration guidance, stage times, files."""
    reg_state = read_checkpoint(reg_checkpoint)
    seg_state = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)
    labeled = split.labeled(cfg.labeled)

    def rel(path: Path) -> str:
        return os.path.relpath(path, paths.out)

    rows = [(f"`{seg_cfg.method}` (student A)",
             f"{len(labeled)} labeled + {len(split.train) - len(labeled)} unlabeled patients, learned registration",
             summary),
            ("`registration-only`", "atlas labels warped by the learned registration", baseline)]
    comparison = []
    if supervised is not None and supervised_checkpoint is not None:
        sup_state = torch.load(supervised_checkpoint, map_location="cpu", weights_only=True)
        rows.insert(0, ("`supervised` (student A)", f"{len(labeled)} labeled patient(s) only", supervised))
        gain = summary.overall["dice"].mean - supervised.overall["dice"].mean
        comparison = [
            (f"`supervised` trains student A on the labeled slices only, with the same options, iterations and "
             f"seed (`{rel(supervised_checkpoint)}`, step {int(sup_state['step'])}, best validation Dice "
             f"{float(sup_state['best_score']):.4f}). On these test volumes `{seg_cfg.method}` scores "
             f"{gain:+.4f} mean Dice against it (one seed: expect a few hundredths of run-to-run spread, "
             "docs/RESULTS.md has the multi-seed grid)."),
            "",
        ]

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
        (f"Segmentation: method `{seg_cfg.method}` with backend `learned`, atlas policy `{seg_cfg.oracle.policy}`, "
         f"{seg_cfg.iterations} iterations at {seg_cfg.image_size[0]}x{seg_cfg.image_size[1]}; test predictions "
         f"by student A of `{rel(seg_checkpoint)}` (step {int(seg_state['step'])}, best validation "
         f"Dice {float(seg_state['best_score']):.4f})."),
        "",
        *([WHY_CCTR_PLUS, ""] if seg_cfg.method == DemoConfig.seg.method else []),
        gate_text(seg_checkpoint.parent / "registration.json", _history(seg_checkpoint.parent / "last.pt"), "a"),
        "",
        "## Test volumes: the method beside its baselines",
        "",
        (f"3D scores on the {summary.num_cases} test volumes (mean ± std over volumes of the mean over "
         "foreground classes; each trained network is its best-on-validation checkpoint)."),
        "",
        comparison_table(rows),
        *comparison,
        summary_markdown(summary, f"Test volumes, {seg_cfg.method} (student A)"),
        *([summary_markdown(supervised, "Test volumes, supervised (student A)")] if supervised is not None else []),
        summary_markdown(baseline, "Test volumes, registration-only (learned backend, same atlases)"),
        *(qc_lines(qc, scores) if qc is not None and scores is not None else []),
        *(suggestion_lines(paths, suggestion) if suggestion is not None else []),
        "## Registration guidance during training",
        "",
        ("Dice (mean over foreground classes) of each atlas label warped onto each unlabeled training "
         "volume, against that volume's phantom label (never used in training): the quality of the "
         "RSL pseudo-labels and REPS correspondences."),
        "",
        guidance_table({spec.replace(f"{paths.out}{os.sep}", ""): v for spec, v in guidance.items()}),
        *(["## The data's plan (`cctr plan`)", "", "```text", plan_text.rstrip(), "```", ""] if plan_text else []),
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
        *([f"- `{rel(paths.baseline_predictions)}/`, `supervised-scores.csv`: the supervised baseline's"]
          if supervised is not None else []),
        f"- `{rel(paths.registration_only)}/`: the registration-only predictions and scores",
        *([f"- `{rel(paths.qc)}`: the quality control of each test prediction"] if qc is not None else []),
        *([f"- `{rel(paths.suggest)}/`: which patient to label next (`suggest.csv`, `suggest.md`, `suggest.png`)"]
          if suggestion is not None else []),
        "- `figures/overlays.png`: image / truth / prediction / warped atlas label on test slices",
        "- `figures/curves.png`: training curves",
        f"- TensorBoard logs: `tensorboard --logdir {paths.out}` (`reg/tb`, `seg/tb`"
        + (", `supervised/tb`)" if supervised is not None else ")"),
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

    plan = plan_for(dataset, split, cfg.labeled)
    # the registration front end (grid, pre-alignment, NCC window) from the data; the network and schedule are cfg.reg's
    reg_cfg = reg_config(plan, base=cfg.reg)
    started, ran = time.perf_counter(), not registration_done(reg_cfg, paths.reg)
    reg_checkpoint = pretrain_registration(dataset, split, reg_cfg, paths.reg, cfg.labeled)
    if ran:
        record_time(paths, "registration pretraining", time.perf_counter() - started, add=True)

    seg_cfg = segmentation_config(cfg, paths, reg_checkpoint)
    started, ran = time.perf_counter(), not segmentation_done(seg_cfg)
    seg_checkpoint = train_segmentation(seg_cfg, dataset, split, frontend(plan), progress)
    if ran:
        record_time(paths, f"{seg_cfg.method} training", time.perf_counter() - started, add=True)

    sup_cfg = supervised_config(seg_cfg, paths)
    started, ran = time.perf_counter(), not segmentation_done(sup_cfg)
    sup_checkpoint = train_segmentation(sup_cfg, dataset, split, progress=progress)
    if ran:
        record_time(paths, "supervised training", time.perf_counter() - started, add=True)

    started = time.perf_counter()
    test_cases = [ref.load() for ref in dataset.of_patients(split.test)]
    predictions = predict_cases(seg_checkpoint, test_cases, paths.predictions, "a", progress)
    scores = score_cases(predictions, test_cases)
    summary = summarize(scores, dataset.class_names)
    write_scores_csv(paths.out / "scores.csv", scores, dataset.class_names)
    sup_scores = score_cases(predict_cases(sup_checkpoint, test_cases, paths.baseline_predictions, "a", progress),
                             test_cases)
    supervised = summarize(sup_scores, dataset.class_names)
    write_scores_csv(paths.out / "supervised-scores.csv", sup_scores, dataset.class_names)
    baseline = registration_baseline(seg_cfg, dataset, split, paths.registration_only, frontend(plan), progress)
    guidance = _read_json(paths.registration_dice)
    if not guidance:
        guidance = guidance_dice(seg_cfg, dataset, split, (seg_cfg.oracle.backend, REFERENCE_BACKEND), frontend(plan),
                                 progress)
        write_json(paths.registration_dice, guidance)
    warped = {cid: read_nifti(p)[0].astype(np.uint8) for cid, p in baseline.predictions.items()}
    plot_overlays(paths.figures / "overlays.png", test_cases, predictions, warped, scores, OVERLAY_ROWS,
                  f"{seg_cfg.method} A")
    plot_curves(paths.figures / "curves.png", paths.reg / "tb", paths.seg / "tb", "a")
    record_time(paths, "evaluation and report", time.perf_counter() - started)

    started, ran = time.perf_counter(), not (paths.suggest / SUGGESTION_MARKER).is_file() or not paths.qc.is_file()
    suggestion = suggestion_stage(paths, seg_cfg, dataset, split, seg_checkpoint, frontend(plan), progress)
    qc = qc_stage(paths, seg_cfg, dataset, split, seg_checkpoint, test_cases, frontend(plan), progress)
    if ran:
        record_time(paths, "suggestion and quality control", time.perf_counter() - started)

    seconds = _read_json(paths.timings)
    write_text_atomic(paths.report, report_markdown(cfg, seg_cfg, split, reg_checkpoint, seg_checkpoint, summary,
                                                    baseline.summary, guidance, seconds, paths, supervised,
                                                    sup_checkpoint, format_plan(plan), suggestion, qc, scores))
    return DemoResult(paths, summary, baseline.summary, supervised, guidance, seconds, suggestion, qc)


