"""``cctr inspect``: read back what runs logged.

- ``curves --run RUN [--reg-log REG/tb] [--student a] --out FIG.png``: a run's training
  curves as the figure ``cctr demo`` draws (:func:`joint.app.figures.plot_curves`):
  registration pretraining (an empty panel without ``--reg-log``, the TensorBoard folder
  ``cctr reg train --out REG`` writes as ``REG/tb``), the student's losses, and the validation
  Dice of both students beside the registration's (the atlas labels warped onto the
  validation volumes, logged by the validation gate; in a ``cctr-coupled`` run that curve
  moves too). ``RUN`` is a ``cctr train`` output folder or a run folder inside a benchmark;
- ``diagnostics BENCHMARK_DIR [--labeled 1] [--out FILE.md] [--quarters]``: the tables of
  :mod:`joint.app.run_diagnostics` for one labeled set of a ``cctr benchmark`` folder: each
  run's validation curve and diagnostics scalars, their mean ± std over seeds and, with
  ``--quarters``, RSL's figures by quarter of training;
- ``compare NAME=DIR[:METHOD] NAME=DIR[:METHOD] ... [--labeled 1] [--out FILE.md]``: the arms of an
  experiment (each the runs of one method in a ``cctr benchmark`` folder, the first the
  control), each arm minus the control paired over draws, seeds and volumes, with intervals and
  verdicts, on the validation volumes (where an option is chosen) and the test volumes
  (:func:`joint.app.comparison.arms_markdown`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cctr.joint.app.benchmark import RunResult, backend_tag, collect_results
from cctr.joint.app.comparison import arms_markdown
from cctr.joint.app.figures import plot_curves
from cctr.joint.app.run_diagnostics import diagnostics_markdown
from cctr.seg.atomic import write_text_atomic


def configure(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="inspect_command", metavar="ACTION")
    actions.required = True

    cu = actions.add_parser("curves", help="draw a run's training curves as one PNG, the figure cctr demo draws")
    cu.add_argument("--run", type=Path, required=True, help="the run folder (holds tb/)")
    cu.add_argument("--reg-log", type=Path, default=None, help="TensorBoard folder of the registration pretraining")
    cu.add_argument("--student", default="a", help="whose losses the middle panel shows (default: a)")
    cu.add_argument("--out", type=Path, required=True, help="the PNG to write")
    cu.set_defaults(func=run_curves)

    di = actions.add_parser("diagnostics", help="tabulate the validation curves and diagnostics of a benchmark's runs")
    di.add_argument("benchmark", type=Path, help="a `cctr benchmark --out` folder")
    di.add_argument("--labeled", default="1", help="labeled set (default 1)")
    di.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    di.add_argument("--quarters", action="store_true", help="add RSL's figures by quarter of training")
    di.set_defaults(func=run_diagnostics)

    co = actions.add_parser("compare", help="arms of an experiment paired over draws, seeds and volumes")
    co.add_argument("arms", nargs="+", metavar="NAME=DIR[:METHOD]", help="the control first, then the other arms")
    co.add_argument("--labeled", default="1", help="labeled set (default 1)")
    co.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    co.set_defaults(func=run_compare)


def run_curves(args: argparse.Namespace) -> int:
    if not (args.run / "tb").is_dir():
        raise FileNotFoundError(f"{args.run}: no tb/ folder here; --run takes a cctr train output folder")
    if args.reg_log is not None and not args.reg_log.is_dir():
        raise FileNotFoundError(f"--reg-log {args.reg_log}: not a folder")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_curves(args.out, args.reg_log, args.run / "tb", args.student))
    return 0


def run_diagnostics(args: argparse.Namespace) -> int:
    text = diagnostics_markdown(args.benchmark, args.labeled, args.quarters)
    if args.out is not None:
        write_text_atomic(args.out, text)
    sys.stdout.write(text)
    return 0


def read_arm(spec: str, labeled: str) -> tuple[str, list[RunResult]]:
    """``NAME=DIR[:METHOD]`` as (name, the finished runs of labeled set ``labeled``); a folder
    whose runs span several methods or backends (after ``METHOD``) is refused, naming them."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"an arm is NAME=BENCHMARK_DIR[:METHOD], got {spec!r}")
    folder, _, method = rest.partition(":")
    runs = [r for r in collect_results(Path(folder)) if r.run.labeled == labeled and method in ("", r.run.method)]
    groups = sorted({(r.run.method, backend_tag(r.run.backend)) for r in runs})
    if not groups:
        raise FileNotFoundError(f"{folder}: no finished run of labeled set {labeled!r}"
                                + (f" and method {method!r}" if method else ""))
    if len(groups) > 1:
        raise ValueError(f"{folder}: its runs span {len(groups)} method/backend groups {groups}; "
                         "name one method as NAME=DIR:METHOD")
    return name, runs


def run_compare(args: argparse.Namespace) -> int:
    if len(args.arms) < 2:
        raise ValueError("compare: give the control and at least one other arm")
    text = arms_markdown([read_arm(spec, args.labeled) for spec in args.arms])
    if args.out is not None:
        write_text_atomic(args.out, text)
    sys.stdout.write(text)
    return 0
