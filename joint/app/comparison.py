"""The benchmark's tables: each method's Dice over labeled draws x seeds, and its paired
difference to a control method with a 95 % interval and a verdict (:mod:`joint.app.paired`),
on the test and validation volumes, under both checkpoint rules.

Outputs in the benchmark folder:

- ``results.md``: per labeled set, a test table and a validation table (one row per method
  and backend: runs, Dice as mean ± sample std over runs of each run's mean over volumes, the
  paired difference to the control with its interval and verdict, for ``best`` and ``last``),
  Dice per class (test, best) and, where ``supervised`` also ran on every label (labeled set
  ``all``), the share of the gap between ``supervised`` and full supervision each method closes;
- ``results.csv``: one row per run, subset, checkpoint rule and class (and the class mean),
  each the mean over that subset's volumes;
- ``comparisons.csv``: one row per compared method, subset and checkpoint rule;
- ``results.png``: the paired differences to the control with their intervals and each run's.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cctr.joint.app.benchmark import CHECKPOINTS, RunResult, backend_tag
from cctr.joint.app.figures import plot_paired_differences
from cctr.joint.app.paired import CellScores, PairedDifference, gap_closed, paired_difference, sample_mean_std
from cctr.seg.atomic import write_text_atomic

MEAN_ROW = "mean"   # the class column of the row holding the mean over classes
DEFAULT_CONTROL = "ct"
CSV_COLUMNS = ("method", "backend", "labeled", "draw", "seed", "subset", "checkpoint", "class", "dice", "hd95_mm",
               "cases")
COMPARISON_COLUMNS = ("labeled", "subset", "checkpoint", "method", "backend", "control", "difference", "low", "high",
                      "verdict", "draws", "seeds", "cases")

Group = tuple[str, str, str]   # (method, backend, labeled set)


@dataclass(frozen=True)
class Comparison:
    """``group`` minus ``control`` on one subset under one checkpoint rule."""

    group: Group
    control: Group
    subset: str
    checkpoint: str
    difference: PairedDifference


def group_results(results: Sequence[RunResult]) -> dict[Group, list[RunResult]]:
    """Results by (method, backend, labeled set), in the order they first appear."""
    groups: dict[Group, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.run.method, r.run.backend, r.run.labeled), []).append(r)
    return groups


def cells(runs: Sequence[RunResult], subset: str, checkpoint: str) -> CellScores:
    """(draw, seed) -> case -> mean foreground Dice, for :func:`joint.app.paired.paired_difference`."""
    return {(r.run.draw, r.run.seed): r.case_dice(subset, checkpoint) for r in runs}


def run_means(runs: Sequence[RunResult], subset: str, checkpoint: str, metric: str = "dice") -> list[float]:
    """Each run's mean over the subset's volumes of the mean over foreground classes."""
    return [r.summary(subset, checkpoint).overall[metric].mean for r in runs]


def control_group(groups: Sequence[Group], control: str, labeled: str) -> Optional[Group]:
    """The control's group in labeled set ``labeled``: method ``control`` (its first backend)."""
    return next((g for g in groups if g[0] == control and g[2] == labeled), None)


def comparisons(results: Sequence[RunResult], control: str = DEFAULT_CONTROL,
                subsets: Sequence[str] = ("test", "val")) -> list[Comparison]:
    """Every other group minus the control of its labeled set, per subset and checkpoint rule;
    groups of a labeled set without the control, or sharing no cell with it, are left out."""
    groups = group_results(results)
    out = []
    for group, runs in groups.items():
        ctl = control_group(list(groups), control, group[2])
        if ctl is None or ctl == group:
            continue
        for subset in subsets:
            for rule in CHECKPOINTS:
                try:
                    diff = paired_difference(cells(runs, subset, rule), cells(groups[ctl], subset, rule))
                except ValueError:
                    continue   # nothing shared: not comparable, said by its absence
                out.append(Comparison(group, ctl, subset, rule, diff))
    return out


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")


def _diff_cells(c: Optional[Comparison], is_control: bool) -> list[str]:
    if is_control:
        return ["control", ""]
    if c is None:
        return ["n/a", "no common run with the control"]
    d = c.difference
    return [f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]", d.verdict]


def _shown(backend: str, prefix: Optional[str]) -> str:
    if not backend:
        return "-"
    return f"`{backend.replace(prefix, '') if prefix else backend}`"


def results_markdown(results: Sequence[RunResult], data_root: Path | str, control: str = DEFAULT_CONTROL,
                     relative_to: Optional[Path] = None) -> str:
    """The tables of the module docstring; the data and backend paths under ``relative_to`` are
    shown relative to it."""
    if not results:
        raise ValueError("no benchmark results to tabulate")
    prefix = f"{relative_to}{os.sep}" if relative_to is not None else None
    if prefix and str(data_root).startswith(prefix):
        data_root = str(data_root)[len(prefix):]   # a results.md that moves with its folder names it right
    groups = group_results(results)
    found = {(c.group, c.subset, c.checkpoint): c for c in comparisons(results, control)}
    first = results[0]
    lines = [
        "# Benchmark",
        "",
        (f"Data: `{data_root}`; {len(first.scores['test']['best'])} test and {len(first.scores['val']['best'])} "
         f"validation volume(s). Dice: 3D, student A for trained methods, mean over foreground classes; each cell "
         f"is the mean ± sample std over runs (labeled draws x seeds) of each run's mean over the volumes. "
         f"`best`: the checkpoint of the best validation Dice; `last`: the last one. `vs {control}`: the paired "
         f"difference to `{control}` over draws, seeds and volumes, with its 95 % interval (hierarchical "
         f"bootstrap over draws, seeds and volumes) and a verdict: better / worse (the interval excludes 0) or "
         f"not distinguishable."),
    ]
    for labeled in dict.fromkeys(g[2] for g in groups):
        mine = {g: runs for g, runs in groups.items() if g[2] == labeled}
        for subset, title in (("test", "Test volumes"), ("val", "Validation volumes (where choices are made)")):
            lines += ["", f"## {title}, labeled set {labeled}", "",
                      f"| method | backend | draws x seeds | best | best vs {control} | verdict | last | "
                      f"last vs {control} | verdict |",
                      "| --- | --- | --- | ---: | --- | --- | ---: | --- | --- |"]
            ctl = control_group(list(mine), control, labeled)
            for g, runs in mine.items():
                draws = len({r.run.draw for r in runs})
                row = [g[0], _shown(g[1], prefix), f"{draws} x {len(runs) // max(draws, 1)}"]
                for rule in CHECKPOINTS:
                    row += [_fmt(*sample_mean_std(run_means(runs, subset, rule))),
                            *_diff_cells(found.get((g, subset, rule)), g == ctl)]
                lines.append("| " + " | ".join(row) + " |")
        names = [str(n) for n in first.class_names[1:]]
        lines += ["", f"## Dice per class, test volumes, best checkpoint, labeled set {labeled}", "",
                  "| method | backend | " + " | ".join(names) + " | HD95 mean (mm) |",
                  "| --- | --- | " + " | ".join(["---:"] * (len(names) + 1)) + " |"]
        for g, runs in mine.items():
            per_class = [_fmt(*sample_mean_std([r.summary().per_class[n]["dice"].mean for r in runs])) for n in names]
            hd95 = _fmt(*sample_mean_std(run_means(runs, "test", "best", "hd95")), 2)
            lines.append("| " + " | ".join([g[0], _shown(g[1], prefix), *per_class, hd95]) + " |")
        lines += gap_lines(groups, labeled, prefix)
    return "\n".join(lines) + "\n"


def gap_lines(groups: dict[Group, list[RunResult]], labeled: str, prefix: Optional[str]) -> list[str]:
    """The gap table of labeled set ``labeled`` (test volumes), or nothing without both a
    ``supervised`` group there and a ``supervised`` group on every label."""
    low = groups.get(("supervised", "", labeled))
    full = groups.get(("supervised", "", "all"))
    if low is None or full is None or labeled == "all":
        return []
    lines = ["", f"## Share of the gap to full supervision closed, test volumes, labeled set {labeled}", "",
             f"(method − supervised) / (supervised on every label − supervised), supervised on every label: "
             f"{len(full)} seed(s); 95 % intervals by the same bootstrap.", "",
             "| method | backend | best | last |", "| --- | --- | --- | --- |"]
    for g, runs in groups.items():
        if g[2] != labeled or g[0] == "supervised":
            continue
        cells_ = []
        for rule in CHECKPOINTS:
            try:
                r = gap_closed(cells(runs, "test", rule), cells(low, "test", rule),
                               {f.run.seed: f.case_dice("test", rule) for f in full})
                cells_.append(f"{r.share:.2f} [{r.low:.2f}, {r.high:.2f}] (gain {r.gain:+.4f} of {r.gap:.4f})")
            except ValueError:
                cells_.append("n/a")
        lines.append("| " + " | ".join([g[0], _shown(g[1], prefix), *cells_]) + " |")
    return lines


def results_csv(results: Sequence[RunResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        for subset in ("test", "val"):
            for rule in CHECKPOINTS:
                summary = r.summary(subset, rule)
                rows = {**{n: s for n, s in summary.per_class.items()}, MEAN_ROW: summary.overall}
                for name, stats in rows.items():
                    writer.writerow([r.run.method, r.run.backend, r.run.labeled, r.run.draw, r.run.seed, subset, rule,
                                     name, repr(float(stats["dice"].mean)), repr(float(stats["hd95"].mean)),
                                     summary.num_cases])
    return buf.getvalue()


def comparisons_csv(found: Sequence[Comparison]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COMPARISON_COLUMNS)
    for c in found:
        writer.writerow([c.group[2], c.subset, c.checkpoint, c.group[0], c.group[1], c.control[0],
                         *c.difference.csv_cells()])
    return buf.getvalue()


def arms_markdown(arms: Sequence[tuple[str, Sequence[RunResult]]]) -> str:
    """Arms of an experiment (name, runs), the first the control: each arm's Dice, and each
    other arm minus the control, paired over the draws, seeds and volumes both ran, on the
    validation volumes (where an option is chosen) and the test volumes, both checkpoint rules."""
    head = ["| arm | draws x seeds | val, best | val vs first | verdict | test, best | test vs first | verdict | "
            "test, last | test vs first | verdict |",
            "| --- | --- | ---: | --- | --- | ---: | --- | --- | ---: | --- | --- |"]
    (_, control), lines = arms[0], []
    for name, runs in arms:
        draws = len({r.run.draw for r in runs})
        row = [name, f"{draws} x {len(runs) // max(draws, 1)}"]
        for subset, rule in (("val", "best"), ("test", "best"), ("test", "last")):
            row.append(_fmt(*sample_mean_std(run_means(runs, subset, rule))))
            if runs is control:
                row += ["control", ""]
                continue
            try:
                d = paired_difference(cells(runs, subset, rule), cells(control, subset, rule))
                row += [f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]", d.verdict]
            except ValueError:
                row += ["no common run", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(head + lines) + "\n"


def write_tables(results: Sequence[RunResult], data_root: Path | str, out_dir: Path,
                 control: str = DEFAULT_CONTROL) -> None:
    """``results.md``, ``results.csv``, ``comparisons.csv`` and ``results.png`` in ``out_dir``."""
    found = comparisons(results, control)
    write_text_atomic(out_dir / "results.md", results_markdown(results, data_root, control, relative_to=out_dir))
    write_text_atomic(out_dir / "results.csv", results_csv(results))
    write_text_atomic(out_dir / "comparisons.csv", comparisons_csv(found))
    panels: dict[str, dict[str, tuple[float, float, float, list[float]]]] = {}
    for c in found:
        if c.subset != "test":
            continue
        label = c.group[0] if not c.group[1] else f"{c.group[0]}\n{backend_tag(c.group[1])}"
        d = c.difference
        panels.setdefault(f"labeled set {c.group[2]}, {c.checkpoint} checkpoint: minus {control}", {})[label] = (
            d.mean, d.low, d.high, list(d.unit_means.values()))
    plot_paired_differences(out_dir / "results.png", panels)
