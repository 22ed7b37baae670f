"""Arms of an experiment compared seed by seed: how docs/RESULTS.md decides an option.

    python scripts/compare_arms.py NAME=BENCHMARK_DIR[:METHOD] NAME=... [--labeled 1] [--out FILE.md]

An arm is one method and backend of a ``cctr benchmark --out`` folder (``:METHOD`` picks one
when the folder holds several). Per seed it reads the best validation Dice of student A (the
``val_a/dice`` scalar of the run's TensorBoard log: the checkpoint the benchmark scores) and
the test Dice the benchmark's table holds for the run (mean over classes and test volumes).
The first table gives each arm's mean ± sample standard deviation over its seeds; the second,
each other arm minus the first (the control), paired by the seeds both ran, as mean ±
standard error of the paired differences. Options are chosen on the validation column; the
test column is read after the choice.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cctr.joint.app.benchmark import MEAN_ROW, RunResult, backend_tag, collect_results, run_values
from cctr.joint.app.run_diagnostics import VAL
from cctr.joint.app.run_diagnostics import run_scalars as scalars
from cctr.seg.data.case import CaseError


@dataclass(frozen=True)
class Arm:
    name: str
    folder: Path
    method: str            # the method and backend tag the arm's runs share
    backend: str
    val: dict[int, float]  # seed -> best validation Dice of student A (seeds with a logged validation)
    test: dict[int, float]  # seed -> test Dice, mean over classes and test volumes


def parse_spec(spec: str) -> tuple[str, Path, Optional[str]]:
    """``NAME=DIR[:METHOD]`` as (name, folder, method or None)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"an arm is NAME=BENCHMARK_DIR[:METHOD], got {spec!r}")
    folder, _, method = rest.partition(":")
    return name, Path(folder), method or None


def best_val(run: Path) -> Optional[float]:
    series = scalars(run).get(VAL, []) if (run / "tb").is_dir() else []
    return max(v for _, v in series) if series else None


def read_arm(name: str, folder: Path, method: Optional[str], labeled: str) -> Arm:
    """The arm's finished runs of labeled set ``labeled``; a folder whose runs of that set span
    several methods or backends (after ``method``) is refused, naming them."""
    results: list[RunResult] = [r for r in collect_results(folder)
                                if r.run.labeled == labeled and (method is None or r.run.method == method)]
    groups = sorted({(r.run.method, backend_tag(r.run.backend)) for r in results})
    if not groups:
        raise CaseError(f"{folder}: no finished run of labeled set {labeled!r}"
                        + (f" and method {method!r}" if method else ""))
    if len(groups) > 1:
        raise CaseError(f"{folder}: its runs span {len(groups)} method/backend groups {groups}; "
                        "name one method as NAME=DIR:METHOD, or give each arm its own folder")
    val: dict[int, float] = {}
    for r in results:
        score = best_val(folder / r.run.folder)
        if score is not None:
            val[r.run.seed] = score
    test = {r.run.seed: float(run_values(r)[MEAN_ROW]["dice"]) for r in results}
    return Arm(name, folder, *groups[0], val=val, test=test)


def _mean_sd(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def _per_seed(scores: dict[int, float]) -> str:
    return " / ".join(f"{scores[s]:.3f}" for s in sorted(scores)) or "-"


def paired(control: dict[int, float], arm: dict[int, float]) -> tuple[list[int], Optional[float], Optional[float]]:
    """The seeds both ran, and the mean and standard error of ``arm - control`` over them
    (standard error None below two seeds; both None without a common seed)."""
    seeds = sorted(set(control) & set(arm))
    d = np.array([arm[s] - control[s] for s in seeds])
    if d.size == 0:
        return seeds, None, None
    return seeds, float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None


def _difference(mean: Optional[float], se: Optional[float]) -> str:
    if mean is None:
        return "-"
    return f"{mean:+.3f} ± {se:.3f}" if se is not None else f"{mean:+.3f}"


def tables(arms: Sequence[Arm]) -> str:
    lines = ["| arm | method | seeds | best val Dice | per seed | test Dice | per seed |",
             "| --- | --- | --- | ---: | --- | ---: | --- |"]
    for a in arms:
        seeds = ", ".join(str(s) for s in sorted(set(a.val) | set(a.test)))
        lines.append(f"| {a.name} | {a.method} ({a.backend}) | {seeds} | {_mean_sd(list(a.val.values()))} | "
                     f"{_per_seed(a.val)} | {_mean_sd(list(a.test.values()))} | {_per_seed(a.test)} |")
    control = arms[0]
    lines += ["", f"| arm − {control.name}, paired by seed | seeds | best val Dice | test Dice |",
              "| --- | --- | ---: | ---: |"]
    for a in arms[1:]:
        val_seeds, val_mean, val_se = paired(control.val, a.val)
        _, test_mean, test_se = paired(control.test, a.test)
        lines.append(f"| {a.name} | {', '.join(map(str, val_seeds)) or '-'} | {_difference(val_mean, val_se)} | "
                     f"{_difference(test_mean, test_se)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arms", nargs="+", metavar="NAME=DIR[:METHOD]",
                   help="the control first, then the arms compared with it")
    p.add_argument("--labeled", default="1", help="labeled set (default 1)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = p.parse_args(argv)
    try:
        arms = [read_arm(*parse_spec(spec), args.labeled) for spec in args.arms]
    except (ValueError, CaseError) as exc:
        raise SystemExit(f"compare_arms: {exc}") from None
    text = tables(arms)
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
