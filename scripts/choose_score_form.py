"""Choose the form of ``cctr suggest``'s score and of the QC estimate on validation scans only.

    python scripts/choose_score_form.py FOLDER [FOLDER ...]

Reads every ``validation.csv`` under the folders (``cctr suggest`` writes one per run; ``cctr
benchmark --acquire`` one per base run under ``acquire/**/suggest/``). Each holds, per validation
scan of one run, the suggestion's components, the QC signals and student A's true Dice. For every
candidate form it prints the Spearman correlation within each run, then its mean and sample std
over runs:

- suggestion weights (disagreement, atlas misfit, distance): the score (weighted mean of the
  components' ranks among the run's validation scans) against the error, 1 - Dice: what a
  suggestion is for is the scans the run gets most wrong;
- QC forms: the students' Dice, the atlas fit, their mean and their minimum, against the Dice.

A form is chosen by its mean; the test scans never enter.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cctr.joint.app.paired import sample_mean_std
from cctr.joint.qc import spearman
from cctr.joint.suggest import COMPONENTS, ranks01

WEIGHTS = ((1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (2, 1, 1), (1, 2, 1),
           (1, 1, 2))
QC_FORMS: dict[str, Callable[[float, float], float]] = {
    "students_dice": lambda s, a: s, "atlas_fit": lambda s, a: a, "mean": lambda s, a: (s + a) / 2,
    "min": lambda s, a: min(s, a)}


def read_rows(path: Path) -> list[dict[str, Optional[float]]]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items() if k != "case"}
                for r in csv.DictReader(f)]


def weighted_score(rows: Sequence[dict], weights: Sequence[float]) -> Optional[np.ndarray]:
    used = [(n, w) for n, w in zip(COMPONENTS, weights) if w > 0]
    if any(r[n] is None for r in rows for n, _ in used):
        return None
    return sum(w * ranks01([r[n] for r in rows]) for n, w in used) / sum(w for _, w in used)


def per_run(files: Sequence[Path]) -> dict[str, list[float]]:
    """Form -> the Spearman of each run that has the signals the form needs."""
    out: dict[str, list[float]] = {}
    for path in files:
        rows = read_rows(path)
        if len(rows) < 3:
            continue
        error = [1.0 - r["true_dice"] for r in rows]  # type: ignore[operator]
        for w in WEIGHTS:
            score = weighted_score(rows, w)
            if score is not None:
                out.setdefault(f"suggest {w}", []).append(spearman(list(score), error))
        for name, form in QC_FORMS.items():
            if all(r["students_dice"] is not None and r["atlas_fit"] is not None for r in rows):
                est = [form(r["students_dice"], r["atlas_fit"]) for r in rows]  # type: ignore[arg-type]
                out.setdefault(f"qc {name}", []).append(spearman(est, [r["true_dice"] for r in rows]))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    files = sorted(f for folder in args.folders for f in Path(folder).rglob("validation.csv"))
    if not files:
        print(f"no validation.csv under {[str(f) for f in args.folders]}", file=sys.stderr)
        return 2
    found = per_run(files)
    print(f"{len(files)} validation.csv file(s); Spearman per run, mean ± sample std over runs")
    print("| form | runs | mean ± std |")
    print("| --- | ---: | ---: |")
    for form, values in found.items():
        mean, std = sample_mean_std([v for v in values if not np.isnan(v)])
        print(f"| {form} | {len(values)} | {mean:.3f} ± {std:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
