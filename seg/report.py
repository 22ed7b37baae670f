"""Reports of 3D scores: the per-case CSV, the summary (mean ± std per class and overall) and
its markdown table. Plain functions over the ``{case_id: {class_index: ClassScore}}`` mapping
that :func:`seg.metrics.score_case` builds, one case at a time.

Aggregation follows the field (and METHOD.md): per class, the mean and standard deviation
over volumes; overall, each volume's scores are first averaged over its classes, then the
mean and standard deviation are taken over volumes. Standard deviations are population
ones (``ddof=0``, numpy's default, as SSL4MIS and BCP print them). NaN values (only present
under the ``exclude`` empty-mask policy) are left out and every statistic carries the count
``n`` of values it used, so nothing is dropped silently.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cctr.seg.atomic import write_text_atomic
from cctr.seg.metrics import ClassScore

METRICS: tuple[str, ...] = tuple(f.name for f in fields(ClassScore))  # ('dice', 'hd95', 'asd')
CSV_COLUMNS: tuple[str, ...] = ("case", "class_index", "class", "dice", "hd95_mm", "asd_mm")

CaseScores = Mapping[str, Mapping[int, ClassScore]]


@dataclass(frozen=True)
class Stat:
    mean: float  # NaN when n == 0
    std: float
    n: int


@dataclass(frozen=True)
class Summary:
    num_cases: int
    per_class: dict[str, dict[str, Stat]]  # class name -> metric name -> Stat
    overall: dict[str, Stat]  # metric name -> Stat of the per-case class means


def _stat(values: Sequence[float]) -> Stat:
    kept = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if kept.size == 0:
        return Stat(mean=math.nan, std=math.nan, n=0)
    # the sample standard deviation (ddof 1), the project's one convention; undefined for one value
    std = float(kept.std(ddof=1)) if kept.size > 1 else math.nan
    return Stat(mean=float(kept.mean()), std=std, n=int(kept.size))


def _foreground(class_names: Sequence[str], scores: CaseScores) -> dict[int, str]:
    """Class index -> name for the foreground classes, checking every case scores exactly these."""
    names = {i: str(name) for i, name in enumerate(class_names) if i > 0}
    for case_id, per_class in scores.items():
        if set(per_class) != set(names):
            raise ValueError(
                f"case {case_id!r} scores classes {sorted(per_class)}, expected {sorted(names)} "
                f"for class names {list(class_names)}"
            )
    return names


def summarize(scores: CaseScores, class_names: Sequence[str]) -> Summary:
    """Mean ± std over cases, per foreground class and overall.

    ``class_names`` lists every class in label order, background first (as in
    :class:`seg.data.case.Case`).
    """
    if not scores:
        raise ValueError("no cases to summarize")
    names = _foreground(class_names, scores)
    per_class = {
        name: {m: _stat([getattr(scores[case][c], m) for case in scores]) for m in METRICS}
        for c, name in names.items()
    }
    overall = {}
    for m in METRICS:
        case_means = []
        for per_case in scores.values():
            values = [getattr(per_case[c], m) for c in names if not math.isnan(getattr(per_case[c], m))]
            case_means.append(float(np.mean(values)) if values else math.nan)
        overall[m] = _stat(case_means)
    return Summary(num_cases=len(scores), per_class=per_class, overall=overall)


def _cell(stat: Stat, digits: int, num_cases: int) -> str:
    if stat.n == 0:
        return "n/a"
    text = f"{stat.mean:.{digits}f}" + ("" if math.isnan(stat.std) else f" ± {stat.std:.{digits}f}")
    return text if stat.n == num_cases else f"{text} (n={stat.n})"


def summary_markdown(summary: Summary, title: str = "Scores") -> str:
    """The summary as a markdown section: a heading, the case count and one table row per
    class plus the overall mean. Dice to 4 decimals, distances in mm to 2."""
    lines = [
        f"## {title}",
        "",
        f"{summary.num_cases} case(s); mean ± sample std over cases; HD95 and ASD in mm.",
        "",
        "| class | Dice | HD95 (mm) | ASD (mm) |",
        "| --- | ---: | ---: | ---: |",
    ]
    rows = list(summary.per_class.items()) + [("**mean**", summary.overall)]
    for name, stats in rows:
        cells = [_cell(stats[m], 4 if m == "dice" else 2, summary.num_cases) for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scores_csv(scores: CaseScores, class_names: Sequence[str]) -> str:
    """The per-case CSV text: one row per case and foreground class, full float precision."""
    names = _foreground(class_names, scores)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case_id, per_class in scores.items():
        for c, name in names.items():
            s = per_class[c]
            writer.writerow([case_id, c, name, *(repr(float(getattr(s, m))) for m in METRICS)])
    return buf.getvalue()


def write_scores_csv(path: Path, scores: CaseScores, class_names: Sequence[str]) -> Path:
    return write_text_atomic(path, scores_csv(scores, class_names))


def write_summary_markdown(path: Path, summary: Summary, title: str = "Scores") -> Path:
    return write_text_atomic(path, summary_markdown(summary, title))
