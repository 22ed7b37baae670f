"""``cctr suggest``'s pipeline for one trained run: the run's students and a registration
gather evidence (:mod:`joint.scan_evidence`) on the run's unlabeled training scans (the pool)
and on its validation scans, the pool's patients are ranked and chosen (:mod:`joint.suggest`),
and the files are written.

The validation scans carry labels, so there the ranking is checked against what it stands
for: each component's, and the score's, Spearman correlation with student A's true error
(1 - Dice) per scan; and the quality-control estimates' with the true Dice
(:mod:`joint.qc`). That is the one place the form of the score and of the estimate is judged;
the pool's own labels (a phantom keeps them) are read for a diagnostic column only, after the
choice, never for it.

Files in the output folder: ``suggest.csv`` (every candidate with every component, its ranks,
its score and its pick), ``validation.csv`` (the same per validation scan, with its true Dice),
``suggest.md`` (what to label next, the top of the ranking and the validation check),
``suggest.png`` (the top candidates with both students' predictions and the warped atlas) and,
last, the marker ``suggestion.json``.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from cctr.joint.config import JointConfig
from cctr.joint.oracle import RegistrationOracle
from cctr.joint.qc import estimated_dice, spearman
from cctr.joint.scan_evidence import PairDistance, ScanEvidence, gather_evidence, register_pairs, student_labels
from cctr.joint.suggest import (COMPONENTS, Candidate, DistanceScale, Ranked, RegisterOntoPick, SuggestConfig,
                                candidates, case_components, choose, scores)
from cctr.reg.backends import Backend, load_backend
from cctr.reg.placement import FrontEnd
from cctr.seg.atomic import write_json, write_text_atomic
from cctr.seg.config import load_config
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.inference import TrainedStudents, load_students
from cctr.seg.metrics import mean_foreground_dice
from cctr.seg.overwrite import refuse_foreign
from cctr.seg.train_data import load_train_data

MARKER = "suggestion.json"
OUTPUTS = ("suggest.csv", "validation.csv", "suggest.md", "suggest.png", MARKER)
FALLBACK_BACKEND = "identity"
FIGURE_ROWS = 3   # candidates shown at least, beside the chosen ones


@dataclass(frozen=True)
class Check:
    """Spearman correlations on the validation scans: each suggestion component (and the
    score) with student A's true error, each QC estimate with the true Dice."""

    scans: int
    with_error: Mapping[str, float]      # component or 'score' -> Spearman with 1 - true Dice
    with_dice: Mapping[str, float]       # 'students_dice', 'atlas_fit', 'estimated_dice' -> Spearman with true Dice


@dataclass(frozen=True)
class Suggestion:
    ranked: list[Ranked]
    backend: str
    config: SuggestConfig
    validation_rows: list[dict]
    check: Optional[Check]
    diagnostic_dice: Mapping[str, float]   # patient -> mean Dice of A against the pool's hidden labels (phantoms)

    @property
    def chosen(self) -> list[str]:
        return [r.candidate.patient_id for r in self.ranked if r.pick]


def run_checkpoint(run: Path) -> Path:
    """The checkpoint a run folder predicts with: ``best.pt``, else ``last.pt``."""
    for name in ("best.pt", "last.pt"):
        if (Path(run) / name).is_file():
            return Path(run) / name
    raise FileNotFoundError(f"{run}: run folder has no best.pt or last.pt")


def run_config(run: Path) -> JointConfig:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; --run must be a folder `cctr train` wrote")
    return load_config(path, JointConfig())


def backend_of(cfg: JointConfig, asked: Optional[str]) -> str:
    """The registration the evidence uses: ``asked``, else the run's own, else identity (said)."""
    if asked:
        return asked
    if cfg.oracle.backend:
        return cfg.oracle.backend
    print(f"cctr: note: the run used no registration; suggesting with '{FALLBACK_BACKEND}' (give --backend SPEC "
          "for a real one)", file=sys.stderr)
    return FALLBACK_BACKEND


def validation_check(evidence: Mapping[str, ScanEvidence], true_dice: Mapping[str, float], scale: DistanceScale,
                     cfg: SuggestConfig) -> tuple[list[dict], Optional[Check]]:
    """Per validation scan: its components, score and QC estimates beside its true Dice; and the
    :class:`Check` (None with fewer than 3 scans, where no rank correlation means anything)."""
    cases = [c for c in evidence if c in true_dice]
    parts = [case_components(evidence[c], scale) for c in cases]
    try:
        score, _ = scores(parts, cfg)
    except ValueError:
        score = np.full(len(cases), np.nan)
    rows = []
    for case, part, s in zip(cases, parts, score):
        e = evidence[case]
        rows.append({"case": case, **part, "score": float(s), "students_dice": e.students_dice,
                     "atlas_fit": e.atlas_fit_a, "estimated_dice": estimated_dice(e.students_dice, e.atlas_fit_a),
                     "true_dice": true_dice[case]})
    if len(rows) < 3:
        return rows, None

    def corr(key: str, target: str) -> float:
        values = [r[key] for r in rows]
        if any(v is None or np.isnan(v) for v in values):
            return float("nan")
        return spearman(values, [r[target] if target == "true_dice" else 1.0 - r["true_dice"] for r in rows])

    with_error = {k: corr(k, "error") for k in (*COMPONENTS, "score")}
    with_dice = {k: corr(k, "true_dice") for k in ("students_dice", "atlas_fit", "estimated_dice")}
    return rows, Check(len(rows), with_error, with_dice)


@dataclass(frozen=True)
class Gathered:
    """The evidence a ranking reads, gathered once: the pool's candidates and scans, the
    validation scans' rows and check (which depend on the weights: see :func:`rank`), the
    diagnostic Dice, and how to register pool scans onto a pick."""

    pool: list[Candidate]
    pool_evidence: Mapping[str, ScanEvidence]
    val_evidence: Mapping[str, ScanEvidence]
    val_dice: Mapping[str, float]
    scale: DistanceScale
    diagnostic_dice: Mapping[str, float]
    onto_pick: RegisterOntoPick
    backend: str


def gather(cfg: JointConfig, dataset: Dataset, split: Split, backend_spec: str, trained: TrainedStudents,
           frontend: Optional[FrontEnd] = None, progress: bool = True) -> Gathered:
    """The evidence about the pool (the unlabeled training scans of the run's labeled set
    ``cfg.labeled`` in ``split``) and the validation scans, from ``trained`` and the
    registration ``backend_spec``."""
    data = load_train_data(dataset, split, cfg.labeled)
    if not data.unlabeled:
        raise CaseError(f"{dataset.root}: labeled set {cfg.labeled!r} leaves no unlabeled training scan to suggest")
    backend = load_backend(backend_spec, frontend, cfg.device)
    # 'fused': the oracle serves every atlas for every scan; the run's cache holds the pairs training warmed
    oracle = RegistrationOracle(data.labeled, [*data.unlabeled, *data.val], backend,
                                replace(cfg.oracle, backend=backend_spec, policy="fused"), seed=cfg.seed)
    hidden: dict[str, float] = {}
    val_dice: dict[str, float] = {}
    labels_of = {c.case_id: c.label for c in data.val}
    num_classes = len(trained.class_names)

    def visit(case: Case, labels: Mapping[str, np.ndarray]) -> None:
        # true Dice where labels may be read: validation scans; the pool's hidden ones for a diagnostic only
        if case.case_id in labels_of:
            val_dice[case.case_id] = mean_foreground_dice(labels["a"], labels_of[case.case_id], num_classes)
        elif case.case_id in data.diagnostic_labels:
            hidden[case.case_id] = mean_foreground_dice(labels["a"], data.diagnostic_labels[case.case_id], num_classes)

    pool_ev = gather_evidence(data.unlabeled, trained, oracle, progress=progress, visit=visit)
    val_ev = gather_evidence(data.val, trained, oracle, progress=progress, visit=visit)
    scale = DistanceScale.of([d for e in pool_ev.values() for d in e.distances.values()])
    pool = candidates(pool_ev, scale)
    diagnostic = {c.patient_id: float(np.mean([hidden[x] for x in c.cases])) for c in pool
                  if all(x in hidden for x in c.cases)}
    return Gathered(pool, pool_ev, val_ev, val_dice, scale, diagnostic,
                    _onto_pick(backend, {c.case_id: c for c in data.unlabeled}), backend_spec)


def rank(g: Gathered, scfg: SuggestConfig) -> Suggestion:
    """The pool ranked and ``scfg.k`` patients chosen (:func:`joint.suggest.choose`), with the
    validation check of these weights."""
    ranked = choose(g.pool, g.pool_evidence, g.scale, scfg, g.onto_pick)
    rows, check = validation_check(g.val_evidence, g.val_dice, g.scale, scfg)
    return Suggestion(ranked, g.backend, scfg, rows, check, g.diagnostic_dice)


def suggest(cfg: JointConfig, checkpoint: Path, dataset: Dataset, split: Split, backend_spec: str,
            scfg: SuggestConfig, frontend: Optional[FrontEnd] = None, progress: bool = True,
            trained: Optional[TrainedStudents] = None) -> Suggestion:
    """Rank and choose the pool's patients for the run ``cfg`` whose students are in
    ``checkpoint``, with the registration ``backend_spec`` (:func:`gather`, :func:`rank`)."""
    trained = trained or load_students(checkpoint)
    return rank(gather(cfg, dataset, split, backend_spec, trained, frontend, progress), scfg)


def _onto_pick(backend: Backend, cases: Mapping[str, Case]) -> RegisterOntoPick:
    def register(candidates_: Sequence[str], picked: Sequence[str]) -> dict[tuple[str, str], PairDistance]:
        pairs = [(c, p) for c in candidates_ for p in picked]
        found = register_pairs(backend, [(cases[c], cases[p]) for c, p in pairs])
        return dict(zip(pairs, found))
    return register


# -- files ----------------------------------------------------------------------------------------

def _num(v: Optional[float], digits: int = 6) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


SUGGEST_COLUMNS = ("pick", "patient", "score", *(f"rank_{n}" for n in COMPONENTS), *COMPONENTS, "deformation_mm",
                   "dissimilarity", "cases", "diagnostic_true_dice")
VALIDATION_COLUMNS = ("case", *COMPONENTS, "score", "students_dice", "atlas_fit", "estimated_dice", "true_dice")


def suggest_csv(s: Suggestion) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUGGEST_COLUMNS)
    for r in s.ranked:
        c = r.candidate
        writer.writerow([r.pick or "", c.patient_id, _num(r.score), *(_num(r.ranks.get(n)) for n in COMPONENTS),
                         *(_num(getattr(c, n)) for n in COMPONENTS), _num(c.deformation_mm), _num(c.dissimilarity),
                         " ".join(c.cases), _num(s.diagnostic_dice.get(c.patient_id))])
    return buf.getvalue()


def validation_csv(s: Suggestion) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(VALIDATION_COLUMNS)
    for row in s.validation_rows:
        writer.writerow([row["case"], *(_num(row[k]) for k in VALIDATION_COLUMNS[1:])])
    return buf.getvalue()


def next_line(s: Suggestion) -> str:
    """The one line naming what to label next."""
    return f"label next: {', '.join(s.chosen)}"


def suggestion_markdown(s: Suggestion, run: str, top: int = 10) -> str:
    weights = ", ".join(f"{n} {w:g}" for n, w in zip(COMPONENTS, s.config.weights))
    lines = [f"# Which scan to label next: `{run}`", "", f"**{next_line(s)}**", "",
             (f"Registration `{s.backend}`; weights {weights}; the score is the weighted mean of each component's "
              f"rank in the pool (0 lowest, 1 highest). Highest score first; `pick` is the order of the choice."),
             "", "| pick | patient | score | disagreement | atlas misfit | distance | deformation mm | dissimilarity |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in s.ranked[:top]:
        c = r.candidate
        lines.append(f"| {r.pick or ''} | {c.patient_id} | {r.score:.3f} | {_num(c.disagreement, 3)} | "
                     f"{_num(c.atlas_misfit, 3)} | {_num(c.distance, 3)} | {_num(c.deformation_mm, 2)} | "
                     f"{_num(c.dissimilarity, 3)} |")
    lines += ["", "## The check on the validation scans", ""]
    if s.check is None:
        lines.append("Fewer than 3 validation scans: no rank correlation to report.")
    else:
        lines += [f"Spearman correlation over the {s.check.scans} validation scans.", "",
                  "| with student A's error (1 - Dice) | Spearman |", "| --- | ---: |",
                  *[f"| {k} | {_num(v, 3) or 'n/a'} |" for k, v in s.check.with_error.items()], "",
                  "| quality control, with the true Dice | Spearman |", "| --- | ---: |",
                  *[f"| {k} | {_num(v, 3) or 'n/a'} |" for k, v in s.check.with_dice.items()]]
    return "\n".join(lines) + "\n"


def check_outputs(out: Path, overwrite: bool) -> None:
    """Refuse to replace files of ours in ``out`` that an earlier ``cctr suggest`` did not write."""
    if overwrite or (out / MARKER).is_file():
        return
    refuse_foreign(out, [name for name in OUTPUTS if (out / name).exists()])


def write_suggestion(out: Path, s: Suggestion, run: Path, dataset: Dataset, trained: TrainedStudents) -> Path:
    """Every file of the module docstring in ``out``; the marker last."""
    from cctr.joint.app.figures import plot_scan_rows

    out = Path(out)
    write_text_atomic(out / "suggest.csv", suggest_csv(s))
    write_text_atomic(out / "validation.csv", validation_csv(s))
    write_text_atomic(out / "suggest.md", suggestion_markdown(s, str(run)))
    shown = s.ranked[:max(FIGURE_ROWS, len(s.chosen))]
    rows = []
    for r in shown:
        case = dataset.ref(r.candidate.cases[0]).load().with_label(None)
        labels = student_labels(trained, case.image)
        title = f"{'pick ' + str(r.pick) if r.pick else 'not chosen'}: {r.candidate.patient_id} ({case.case_id})"
        rows.append((title, case, {f"student {k.upper()}": v for k, v in labels.items()}))
    plot_scan_rows(out / "suggest.png", rows)
    write_json(out / MARKER, {"run": str(Path(run).resolve()), "backend": s.backend, "chosen": s.chosen,
                              "weights": dict(zip(COMPONENTS, s.config.weights)), "k": s.config.k})
    return out
