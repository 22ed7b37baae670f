"""``cctr benchmark``: the comparison grid of METHOD.md's methods (see :mod:`joint.app.benchmark`).

    cctr benchmark [--data DIR] [--split FILE] [--methods supervised,ct,cct,cctr-rsl,cctr,cctr-coupled,registration-only]
                   [--backends learned:CKPT,sitk-demons,identity] [--labeled 1,3] [--seeds 3]
                   [--out DIR] [--config YAML_OR_PRESET] [--set key=value ...]
                   [--patients N] [--reg-steps N] [--threads N] [--no-progress]
    cctr benchmark --out DIR --tabulate

Without ``--data`` the phantom (``--patients`` patients) is generated into ``OUT/data``. A bare
``learned`` backend means: pretrain the registration net on the data's training volumes into
``OUT/reg`` (``--reg-steps`` steps, the demo's registration config otherwise) and use it.
``--seeds N`` runs seeds 0..N-1. The segmentation options start from the ``cpu-small`` preset
(or ``--config``), with the Field disk cache in ``OUT/reg-cache``, then every ``--set``.
Re-running the same command skips every finished run and rewrites the tables. Like ``cctr
demo``, the process uses ``--threads`` torch threads, 1 by default (0: torch's default).
Several commands may share one ``--out`` with disjoint grids (e.g. one process per core);
``--tabulate`` then writes one table of every finished run there, and runs nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cctr.joint.app.benchmark import collect_results, data_of, plan_runs, run_grid, write_tables
from cctr.joint.app.demo import DemoConfig
from cctr.joint.app.stages import pretrain_registration
from cctr.joint.config import build_config
from cctr.joint.methods import METHODS, REGISTRATION_METHODS
from cctr.joint.plan import frontend, plan_for, reg_config, seg_overrides
from cctr.seg.config import PRESETS
from cctr.seg.data.case import CaseError
from cctr.seg.data.phantom import write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split

DEFAULT_BACKENDS = "learned,identity"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: generate the phantom in OUT/data)")
    p.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset folder's split.json)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default {','.join(METHODS)})")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help="comma-separated registration backend specs for the registration methods; a bare "
                        f"'learned' pretrains one in OUT/reg (default {DEFAULT_BACKENDS})")
    p.add_argument("--labeled", default="1", help="comma-separated labeled sets of the split (default 1)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, FIRST..FIRST+N-1 (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (default 0): two processes on one --out can share out the seeds of one grid")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="benchmark folder (default runs/benchmark)")
    p.add_argument("--config", default=None, help=f"a preset ({', '.join(sorted(PRESETS))}) or a YAML file of options")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="segmentation / registration option for every run, e.g. --set iterations=400")
    p.add_argument("--patients", type=int, default=DemoConfig.patients,
                   help=f"phantom patients when generating (default {DemoConfig.patients})")
    p.add_argument("--reg-steps", type=int, default=DemoConfig.reg.train.steps,
                   help=f"pretraining steps for a bare 'learned' backend (default {DemoConfig.reg.train.steps})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process; 0 keeps torch's default, one per core (default 1: on a CPU "
                        "shared with other jobs, more threads spin-wait on each other and run several times slower)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--tabulate", action="store_true",
                   help="run nothing; write the CSV, table and plot of every finished run in --out")
    p.set_defaults(func=run)


def _items(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what}: give at least one value")
    return items


def _report(out: Path, count: int) -> None:
    print((out / "results.md").read_text(), end="")
    print(f"{count} run(s); wrote {out / 'results.csv'}, {out / 'results.md'} and {out / 'results.png'}")


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    if args.tabulate:
        results = collect_results(out)
        # where the runs ran, as their markers say: --data is not needed and out/data need not be it
        write_tables(results, args.data.resolve() if args.data is not None else data_of(results), out)
        _report(out, len(results))
        return 0
    if args.seeds < 1 or args.first_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --first-seed >= 0, got {args.seeds} and {args.first_seed}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)   # this command's process only
    methods, labeled = _items(args.methods, "methods"), _items(args.labeled, "labeled")
    backends = _items(args.backends, "backends") if any(m in REGISTRATION_METHODS for m in methods) else []
    build_config(args.config, args.overrides)   # refuse bad options before any work
    plan_runs(methods, backends, labeled, seeds)  # and a bad grid

    data = args.data
    if data is None:
        data = out / "data"
        if not (data / "dataset.json").is_file():
            write_phantom(data, args.patients, seed=0, progress=None if not args.no_progress else False)
    dataset = open_dataset(data)
    split = load_split(args.split) if args.split is not None else dataset.default_split
    if split is None:
        raise CaseError(f"{data}: the folder has no split.json; pass --split FILE")
    split.check_patients(dataset.patient_ids, str(args.split or data))
    plan = plan_for(dataset, split)
    base = build_config(args.config, args.overrides, field_cache=str(out / "reg-cache"),
                        planned=seg_overrides(plan) if args.config is None else None)
    if "learned" in backends:
        if args.reg_steps < 1:
            raise ValueError(f"--reg-steps must be >= 1, got {args.reg_steps}")
        # the demo's network and schedule on the dataset's planned grid and pre-alignment
        reg_cfg = reg_config(plan, base=DemoConfig().reg.with_overrides(steps=args.reg_steps))
        ckpt = pretrain_registration(dataset, split, reg_cfg, out / "reg", labeled[0])
        backends = [f"learned:{ckpt}" if b == "learned" else b for b in backends]

    runs = plan_runs(methods, backends, labeled, seeds)
    results = run_grid(runs, base, dataset, split, out, frontend(plan), progress=not args.no_progress)
    _report(out, len(results))
    return 0
