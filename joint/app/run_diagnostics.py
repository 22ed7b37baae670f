"""What went on inside the runs of a benchmark folder: markdown tables of each run's validation
curve and its ``diag/``, ``rsl/``, ``reps/`` and ``synth/`` scalars (docs/METHOD.md),
then their mean ± sample std over runs (labeled draws x seeds), so a Dice table can be read with the reasons beside it.

Per run (student A): the best validation Dice and its step (the checkpoint ``best.pt`` the
benchmark scores), the validation Dice at the last validation, and the mean over the second
half of training of: the accuracy of the contrastive pool's pseudo-labels (``pool acc``) and
of its class-balanced anchors (``anchor acc``), the gradient norms of the contrastive term
(on the embedding) and of the supervised and cross-teaching terms (on the logits), the share
of anchors that found a registration positive (``REPS valid``), the share of those whose atlas
label is the anchor's class (``REPS agree``, steps that found one), the Dice of the RSL targets
against the hidden labels (``RSL Dice``) and, on the pixels it teaches, the accuracy of its targets and of student A against the hidden labels (``RSL acc``,
``A acc at RSL``), and the share of the synthesised samples' pixels that map inside the atlas
(``synth inside``); with the validation gate on (``gate.mode``), the step from which the gate
keeps RSL closed to student A to the end (``A closed from``; ``-``: open at the end).
:func:`quarter_table` gives RSL's figures by quarter of training (mean over runs; ``-``: no
step of that quarter logged it, e.g. RSL closed to both students). The hidden labels of
"unlabeled" volumes were read for these figures only, never for training or selection.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cctr.joint.app.figures import read_scalars
from cctr.seg.data.case import CaseError

# RSL on the pixels it teaches (column name -> scalar tag), in both tables
RSL_AT_ITS_PIXELS = {
    "RSL acc": "rsl/target_acc_hidden",
    "A acc at RSL": "rsl/acc_hidden_a",
}
# column name -> scalar tag (student A); '-' in the table when a run does not log it
SECOND_HALF = {
    "pool acc": "diag/pool_acc_a",
    "anchor acc": "diag/anchor_acc_a",
    "|g cl|": "diag/grad_joint_cl_a_emb",
    "|g sup|": "diag/grad_a_sup_a_logits",
    "|g cps|": "diag/grad_a_cps_a_logits",
    "|g rsl|": "diag/grad_a_rsl_a_logits",
    "REPS valid": "reps/valid_fraction",
    "REPS agree": "reps/label_agreement",
    "RSL Dice": "rsl/target_dice_hidden",
    **RSL_AT_ITS_PIXELS,
    "synth inside": "synth/inside",
}
VAL = "val_a/dice"
# the quarter table: column name -> scalar tag
BY_QUARTER = {**RSL_AT_ITS_PIXELS, "B acc at RSL": "rsl/acc_hidden_b"}
# the gate's decisions for student A (runs before the gate moved to ``gate.*`` logged it under rsl)
GATE = ("val_gate/open_a", "val_rsl/open_a")
STEP_COLUMNS = ("best step", "A closed from")
COLUMNS = ("best val Dice", "best step", "last val Dice", *SECOND_HALF, "A closed from")

Series = list[tuple[int, float]]   # (step, value)
Tags = dict[str, Series]           # scalar tag -> its series
# (method, backend folder) -> [("draw/seed", its scalars)]
Runs = dict[tuple[str, str], list[tuple[str, Tags]]]


def run_scalars(run: Path) -> Tags:
    """Every scalar series of a run folder's TensorBoard log (``run/tb``)."""
    return {tag: list(zip(steps.tolist(), values.tolist())) for tag, (steps, values) in read_scalars(run / "tb").items()}


def second_half_mean(series: Sequence[tuple[int, float]]) -> float:
    last = max(step for step, _ in series)
    return float(np.mean([v for step, v in series if step > last / 2]))


def quarter_means(series: Sequence[tuple[int, float]], last: int) -> list[Optional[float]]:
    """Mean of ``series`` over each quarter ``[q, q + 1) * last / 4`` of a run of ``last`` steps
    (the final step counts in the last quarter); None for a quarter without a value."""
    quarters: list[list[float]] = [[], [], [], []]
    for step, value in series:
        quarters[min(int(4 * step / max(last, 1)), 3)].append(value)
    return [float(np.mean(q)) if q else None for q in quarters]


def closed_from(opened: Sequence[tuple[int, float]]) -> Optional[float]:
    """The first validation step after which every decision is 'closed'; None if open at the end."""
    start = None
    for step, is_open in opened:
        start = None if is_open else (step if start is None else start)
    return None if start is None else float(start)


def summarize_run(tags: Tags) -> dict[str, Optional[float]]:
    """One run's row: :data:`COLUMNS` -> value, None where the run did not log it."""
    row: dict[str, Optional[float]] = {}
    val = tags.get(VAL, [])
    if val:
        best_step, best = max(val, key=lambda sv: (sv[1], -sv[0]))
        row["best val Dice"], row["best step"], row["last val Dice"] = best, float(best_step), val[-1][1]
    for column, tag in SECOND_HALF.items():
        row[column] = second_half_mean(tags[tag]) if tag in tags else None
    gate = next((tags[t] for t in GATE if t in tags), None)
    row["A closed from"] = None if gate is None else closed_from(gate)
    return row


def read_runs(benchmark: Path, labeled: str) -> Runs:
    """The finished or running runs of labeled set ``labeled`` that have TensorBoard logs, as
    ``cctr benchmark`` lays them out (``runs/METHOD/BACKEND/labeled-L/draw-D/seed-N/tb``), each
    log read once, named ``D/N``; :class:`CaseError` naming the folder when there is none."""
    found: dict[tuple[str, str], list[tuple[tuple[int, int], Path]]] = defaultdict(list)
    for tb in Path(benchmark).glob(f"runs/*/*/labeled-{labeled}/draw-*/seed-*/tb"):
        run = tb.parent
        unit = (int(run.parent.name.split("-")[1]), int(run.name.split("-")[1]))
        found[(run.parts[-5], run.parts[-4])].append((unit, run))
    if not found:
        raise CaseError(f"{benchmark}: no runs of labeled set {labeled!r} with TensorBoard logs (expected "
                        f"runs/METHOD/BACKEND/labeled-{labeled}/draw-D/seed-N/tb, as `cctr benchmark` writes)")
    return {group: [(f"{d}/{s}", run_scalars(run)) for (d, s), run in sorted(units)]
            for group, units in sorted(found.items())}


def _cell(value: Optional[float], column: str) -> str:
    if value is None:
        return "-"
    if column in STEP_COLUMNS:
        return f"{value:.0f}"
    return f"{value:.4f}" if abs(value) >= 1e-2 else f"{value:.2e}"


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = float(np.mean(values))
    if abs(mean) < 1e-2:
        return f"{mean:.2e}"
    return f"{mean:.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{mean:.4f}"


def tables(runs: Runs) -> str:
    """The mean ± sample std table over each group's runs, then the table of every run."""
    grouped_columns = [c for c in COLUMNS if c != "best step"]
    per_run = [f"| method | backend | draw/seed | {' | '.join(COLUMNS)} |", "|" + " --- |" * 3 + " ---: |" * len(COLUMNS)]
    grouped = [f"| method | backend | runs | {' | '.join(grouped_columns)} |",
               "|" + " --- |" * 3 + " ---: |" * len(grouped_columns)]
    for (method, backend), seeds in runs.items():
        rows = []
        for seed, tags in seeds:
            row = summarize_run(tags)
            rows.append(row)
            per_run.append(f"| {method} | {backend} | {seed} | " + " | ".join(_cell(row.get(c), c) for c in COLUMNS) + " |")
        cells = []
        for c in grouped_columns:
            if c in STEP_COLUMNS:   # a step per seed says more than their mean
                cells.append(" / ".join(_cell(r.get(c), c) for r in rows))
            else:
                cells.append(_mean_std([r[c] for r in rows if r.get(c) is not None]))
        grouped.append(f"| {method} | {backend} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(grouped) + "\n\n" + "\n".join(per_run) + "\n"


def quarter_table(runs: Runs) -> str:
    """RSL's figures (:data:`BY_QUARTER`) by quarter of training, mean over each group's runs;
    a figure no run of the group logged is left out."""
    lines = ["| method | backend | figure | quarter 1 | quarter 2 | quarter 3 | quarter 4 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for (method, backend), seeds in runs.items():
        per_seed = []
        for _, tags in seeds:
            last = max((step for series in tags.values() for step, _ in series), default=0)
            per_seed.append({c: quarter_means(tags[t], last) if t in tags else [None] * 4 for c, t in BY_QUARTER.items()})
        for column in BY_QUARTER:
            cells = []
            for q in range(4):
                values = [r[column][q] for r in per_seed if r[column][q] is not None]
                cells.append(f"{np.mean(values):.3f}" if values else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {method} | {backend} | {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diagnostics_markdown(benchmark: Path, labeled: str = "1", quarters: bool = False) -> str:
    """The tables of a benchmark folder's runs of one labeled set, with the quarter table
    after them when ``quarters``."""
    runs = read_runs(benchmark, labeled)
    return tables(runs) + ("\n" + quarter_table(runs) if quarters else "")
