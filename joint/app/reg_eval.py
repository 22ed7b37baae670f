"""Registration evaluation: how well each backend transfers labels between the labeled
volumes of a split, how regular its maps are, and how long it takes, all from one run.

For every (fixed, moving) pair of labeled volumes and every backend: the moving label warped
into the fixed volume (one-hot, linear, argmax) is scored against the fixed volume's own
label with :func:`seg.metrics.score_case` (Dice, HD95 in mm with the fixed spacing), plus the
% of fixed voxels with Jacobian determinant <= 0 and the std of log|J|. Seconds per pair are
the backend's wall time over all pairs (``register_many``: batched where it can batch)
divided by the number of pairs; scoring is not timed.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cctr.reg.backends import Backend
from cctr.reg.jacobian import regularity
from cctr.seg.data.case import Case, CaseRef
from cctr.seg.data.dataset import Dataset
from cctr.seg.metrics import ClassScore, score_case
from cctr.seg.atomic import write_text_atomic
from cctr.seg.report import summarize


@dataclass(frozen=True)
class PairResult:
    backend: str
    fixed: str
    moving: str
    scores: dict[int, ClassScore]
    folded_percent: float
    log_jac_std: float
    seconds: float  # the backend's time per pair in this run, after one untimed warm-up pair


def labeled_pairs(
    dataset: Dataset, patients: Sequence[str], count: int, seed: int, intra_patient: bool = False
) -> list[tuple[CaseRef, CaseRef]]:
    """Up to ``count`` (fixed, moving) pairs of labeled cases of ``patients``, drawn from
    ``seed``: inter-patient pairs, plus pairs of one patient's frames when ``intra_patient``."""
    refs = [r for r in dataset.of_patients(patients) if r.has_label]
    pairs = [
        (a, b) for a in refs for b in refs
        if a.case_id != b.case_id and (a.patient_id != b.patient_id or intra_patient)
    ]
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i] for i in order[:count]]


def evaluate(
    backends: Sequence[Backend], pairs: Sequence[tuple[CaseRef, CaseRef]], class_names: Sequence[str], show_progress: bool = False
) -> list[PairResult]:
    """Every backend (see :func:`reg.backends.load_backend`) on every pair."""
    if not pairs:
        raise ValueError("no labeled pairs to evaluate registration on (too few labeled patients in this subset?)")
    cases: dict[str, Case] = {}

    def load(ref: CaseRef) -> Case:
        if ref.case_id not in cases:
            cases[ref.case_id] = ref.load()
        return cases[ref.case_id]

    loaded = [(load(f), load(m)) for f, m in pairs]
    num_classes = len(class_names)
    results = []
    jobs = [(f.image, f.spacing, m.image, m.spacing) for f, m in loaded]
    for backend in tqdm(backends, desc="backends", unit="backend", disable=not show_progress):
        # one untimed pair first: one-time costs (allocations, autograd's first backward, thread
        # pools) would otherwise be charged to whichever backend of the run comes first
        backend.register_many(jobs[:1])
        start = time.perf_counter()
        fields = backend.register_many(jobs)
        per_pair = (time.perf_counter() - start) / len(loaded)
        for (f, m), compact in zip(loaded, fields):
            field = compact.dense()
            warped = field.warp_labels(m.label, num_classes)
            reg = regularity(field)
            results.append(PairResult(
                str(backend.spec), f.case_id, m.case_id, score_case(warped, f.label, f.spacing, num_classes),
                reg.folded_percent, reg.log_jac_std, per_pair,
            ))
    return results


CSV_COLUMNS = ("backend", "fixed", "moving", "class_index", "class", "dice", "hd95_mm", "folded_percent", "log_jac_std", "seconds_per_pair")


def pairs_csv(results: Sequence[PairResult], class_names: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        for c, s in sorted(r.scores.items()):
            writer.writerow([r.backend, r.fixed, r.moving, c, class_names[c], repr(s.dice), repr(s.hd95),
                             repr(r.folded_percent), repr(r.log_jac_std), repr(r.seconds)])
    return buf.getvalue()


@dataclass(frozen=True)
class BackendRow:
    backend: str
    pairs: int
    dice: dict[str, float]  # class name -> mean over pairs
    hd95: dict[str, float]
    mean_dice: float  # mean over pairs of the per-pair class mean
    mean_dice_std: float
    mean_hd95: float
    folded_percent: float
    log_jac_std: float
    seconds: float


def summarize_backends(results: Sequence[PairResult], class_names: Sequence[str]) -> list[BackendRow]:
    rows = []
    for spec in dict.fromkeys(r.backend for r in results):
        mine = [r for r in results if r.backend == spec]
        summary = summarize({f"{r.fixed}<-{r.moving}": r.scores for r in mine}, class_names)
        rows.append(BackendRow(
            backend=spec,
            pairs=len(mine),
            dice={name: stats["dice"].mean for name, stats in summary.per_class.items()},
            hd95={name: stats["hd95"].mean for name, stats in summary.per_class.items()},
            mean_dice=summary.overall["dice"].mean,
            mean_dice_std=summary.overall["dice"].std,
            mean_hd95=summary.overall["hd95"].mean,
            folded_percent=float(np.mean([r.folded_percent for r in mine])),
            log_jac_std=float(np.nanmean([r.log_jac_std for r in mine])) if any(not math.isnan(r.log_jac_std) for r in mine) else math.nan,
            seconds=mine[0].seconds,
        ))
    return rows


def table_markdown(rows: Sequence[BackendRow], class_names: Sequence[str]) -> str:
    """One row per backend: per-class Dice and HD95 (mm), their means, % det J <= 0,
    std log|J| and seconds per pair."""
    names = [str(n) for n in class_names[1:]]
    head = (["backend", "pairs"] + [f"Dice {n}" for n in names] + ["mean Dice"]
            + [f"HD95 {n} (mm)" for n in names] + ["mean HD95 (mm)", "% det J <= 0", "std log J", "s / pair"])
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join(["---:"] * (len(head) - 1)) + " |"]
    for r in rows:
        cells = ([f"`{r.backend}`", str(r.pairs)] + [f"{r.dice[n]:.3f}" for n in names]
                 + [f"{r.mean_dice:.3f} ± {r.mean_dice_std:.3f}"] + [f"{r.hd95[n]:.2f}" for n in names]
                 + [f"{r.mean_hd95:.2f}", f"{r.folded_percent:.3f}", f"{r.log_jac_std:.3f}", f"{r.seconds:.3f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, results: Sequence[PairResult], class_names: Sequence[str]) -> tuple[Path, Path]:
    """``pairs.csv`` and ``summary.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    rows = summarize_backends(results, class_names)
    n_pairs = rows[0].pairs if rows else 0
    text = (f"# Registration evaluation\n\n{n_pairs} labeled pair(s) per backend; warped moving labels vs the "
            f"fixed labels; means over pairs.\n\n" + table_markdown(rows, class_names))
    return (write_text_atomic(out_dir / "pairs.csv", pairs_csv(results, class_names)),
            write_text_atomic(out_dir / "summary.md", text))
