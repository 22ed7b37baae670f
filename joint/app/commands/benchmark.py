"""``cctr benchmark``: METHOD.md's methods compared over labeled draws x seeds, paired, with
intervals (see :mod:`joint.app.benchmark` and :mod:`joint.app.comparison`).

    cctr benchmark [--data DIR | --kind cardiac|abdomen --difficulty 1|2|3 --patients N]
                   [--split FILE] [--methods supervised,ct,cctr,cctr+,registration-only]
                   [--backends learned,sitk-demons] [--labeled 1] [--draws 3] [--seeds 2]
                   [--control ct] [--out DIR] [--config YAML_OR_PRESET] [--set key=value ...]
                   [--reg-steps N] [--threads N] [--no-progress]
                   [--acquire 1,2 [--rules suggest,random,farthest] [--weights D,A,R]]
    cctr benchmark --out DIR --tabulate [--control METHOD] [--acquire 1,2]

Without ``--data`` a phantom is generated into ``OUT/data``: ``--patients`` training patients
(default 12), 4 validation patients and 24 (cardiac) or 12 (abdominal) test patients, enough
volumes to see a difference between methods. ``--draws K`` gives each labeled set ``K`` draws of
its size (draw 0 is the split's own set; the others come from recorded seeds; the benchmark's
split with all of them is ``OUT/split.json``), every method on the same draws. For each draw the
dataset's plan reads that draw's labels only, and a bare ``learned`` backend is the net
pretrained on that plan into ``OUT/reg/<plan>`` (``--reg-steps`` steps, the demo's
registration config otherwise): draws whose plans give the same registration config share one
net. ``--seeds N`` runs seeds FIRST..FIRST+N-1. The segmentation options start from the
``cpu-small`` preset with the draw's plan (or ``--config``), with the Field disk cache in
``OUT/reg-cache``, then every ``--set``. Re-running the same command skips every finished run
and rewrites the tables. Like ``cctr demo``, the process uses ``--threads`` torch threads, 1 by
default (0: torch's default). Several commands may share one ``--out`` with disjoint grids (e.g.
one process per core); ``--tabulate`` then writes the tables of every finished run there, and
runs nothing. ``--control`` names the method every other one is compared with (default ``ct``).

``--acquire K[,K]`` then runs the benchmark of the choice (:mod:`joint.app.acquisition`): from
every finished run of the grid, each of ``--rules`` (``suggest``: ``cctr suggest``'s score with
``--weights``; ``random``; ``farthest``: the distance under registration alone) adds K
patients to the run's labeled draw, the run is retrained with the same options and scored, and
``acquisition.md`` / ``acquisition.csv`` compare the rules paired over draws x seeds x test
volumes, with the base runs' quality control on the test scans and the suggestion's check on
the validation scans. Like the grid, it resumes: finished choices and runs are kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch

from cctr.joint.app.acquisition import RULES, Acquisition, run_acquisition, write_acquisition_tables
from cctr.joint.app.benchmark import LEARNED, DrawSetup, collect_results, data_of, plan_runs, run_grid
from cctr.joint.app.comparison import DEFAULT_CONTROL, write_tables
from cctr.joint.app.demo import DemoConfig
from cctr.joint.app.stages import pretrain_registration
from cctr.joint.config import build_config
from cctr.joint.methods import METHODS, PLUS, REGISTRATION_METHODS, REGISTRATION_ONLY
from cctr.joint.plan import frontend, plan_for, reg_config, seg_overrides
from cctr.joint.suggest import SuggestConfig
from cctr.seg.atomic import write_json
from cctr.seg.config import PRESETS
from cctr.seg.data.case import CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.phantom_abdomen import AbdomenPhantomConfig, write_abdomen_phantom
from cctr.seg.data.phantom_common import LEVELS
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import SPLIT_FILENAME, Split, draw_split, load_split, save_split, with_drawn_sets

DEFAULT_METHODS = ("supervised", "ct", "cctr", PLUS, REGISTRATION_ONLY)
DEFAULT_BACKENDS = LEARNED
VALIDATION_PATIENTS = 4
TEST_PATIENTS = {"cardiac": 24, "abdomen": 12}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: generate a phantom in OUT/data)")
    p.add_argument("--kind", choices=tuple(TEST_PATIENTS), default="cardiac",
                   help="the phantom to generate without --data (default cardiac)")
    p.add_argument("--difficulty", type=int, choices=LEVELS, default=1,
                   help="how much the generated phantom's subjects differ (1, the default, to 3)")
    p.add_argument("--patients", type=int, default=12, help="training patients of the generated phantom (default 12)")
    p.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset folder's split.json)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help="comma-separated registration backend specs for the registration methods; a bare "
                        f"'learned' pretrains one per draw's plan in OUT/reg (default {DEFAULT_BACKENDS})")
    p.add_argument("--labeled", default="1", help="comma-separated labeled sets of the split (default 1)")
    p.add_argument("--draws", type=int, default=3, help="labeled draws per labeled set (default 3)")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds, FIRST..FIRST+N-1 (default 2)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (default 0): two processes on one --out can share out the seeds of one grid")
    p.add_argument("--control", default=DEFAULT_CONTROL,
                   help=f"the method every other one is compared with, paired (default {DEFAULT_CONTROL})")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="benchmark folder (default runs/benchmark)")
    p.add_argument("--config", default=None, help=f"a preset ({', '.join(sorted(PRESETS))}) or a YAML file of options")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="segmentation / registration option for every run, e.g. --set iterations=400")
    p.add_argument("--reg-steps", type=int, default=DemoConfig.reg.train.steps,
                   help=f"pretraining steps for a bare 'learned' backend (default {DemoConfig.reg.train.steps})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process; 0 keeps torch's default, one per core (default 1: on a CPU "
                        "shared with other jobs, more threads spin-wait on each other and run several times slower)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--tabulate", action="store_true",
                   help="run nothing; write the tables and plot of every finished run in --out")
    p.add_argument("--acquire", default=None, metavar="K[,K]",
                   help="the benchmark of the choice: add K patients chosen by each of --rules to every run's labeled "
                        "draw and retrain (e.g. 1,2)")
    p.add_argument("--rules", default=",".join(RULES), help=f"rules of --acquire (default {','.join(RULES)})")
    p.add_argument("--weights", default=",".join(f"{w:g}" for w in SuggestConfig().weights), metavar="D,A,R",
                   help="weights of the suggest rule's disagreement, atlas misfit and distance (as cctr suggest)")
    p.set_defaults(func=run)


def _items(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{what}: give at least one value")
    return items


def _report(out: Path, count: int) -> None:
    print((out / "results.md").read_text(), end="")
    print(f"{count} run(s); wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'comparisons.csv'} "
          f"and {out / 'results.png'}")


def generated_phantom(out: Path, kind: str, difficulty: int, train: int, progress: bool) -> Path:
    """``OUT/data``: the phantom of ``kind`` at ``difficulty`` with ``train`` training, 4 validation
    and the kind's test patients, generated unless there (its split, split.json, by counts)."""
    data = out / "data"
    if not (data / "dataset.json").is_file():
        patients = train + VALIDATION_PATIENTS + TEST_PATIENTS[kind]
        show = None if progress else False
        if kind == "cardiac":
            write_phantom(data, patients, seed=0, cfg=PhantomConfig.at_level(difficulty), progress=show)
        else:
            write_abdomen_phantom(data, patients, seed=0, cfg=AbdomenPhantomConfig().at_level(difficulty), progress=show)
        ids = open_dataset(data).patient_ids
        save_split(draw_split(ids, 0, counts=(VALIDATION_PATIENTS, TEST_PATIENTS[kind])), data / SPLIT_FILENAME)
    return data


def with_recorded_sets(split: Split, recorded: Path) -> Split:
    """``split`` with the labeled sets an earlier command on the same folder recorded in
    ``recorded``, so a later grid (``--labeled all``, another size) keeps the draws the earlier
    runs trained on; a record of another split, or of another set under the same name, is
    refused."""
    if not recorded.exists():
        return split
    earlier = load_split(recorded)
    if any(sorted(getattr(earlier, part)) != sorted(getattr(split, part)) for part in ("train", "val", "test")):
        raise CaseError(f"{recorded}: records another train/val/test split than this command's; "
                        f"use another --out or the split it records (--split {recorded})")
    for name, patients in earlier.labeled_sets.items():
        if name in split.labeled_sets and sorted(split.labeled_sets[name]) != sorted(patients):
            raise CaseError(f"{recorded}: labeled set {name!r} is recorded as {sorted(patients)}, "
                            f"this command has {sorted(split.labeled_sets[name])}; use another --out")
    return replace(split, labeled_sets={**earlier.labeled_sets, **split.labeled_sets})


def draw_setups(args: argparse.Namespace, dataset: Dataset, split: Split, labeled: list[str], backends: list[str],
                out: Path) -> tuple[Split, dict[tuple[str, int], DrawSetup]]:
    """The benchmark's split with every draw, and each draw's setup (its plan's configuration,
    front end and, for a bare 'learned' backend, its pretrained net)."""
    setups = {}
    for name in labeled:
        split, names = with_drawn_sets(split, name, args.draws)
        for draw, set_name in enumerate(names):
            plan = plan_for(dataset, split, set_name)
            base = build_config(args.config, args.overrides, field_cache=str(out / "reg-cache"),
                                planned=seg_overrides(plan) if args.config is None else None)
            learned = None
            if LEARNED in backends:
                # the demo's network and schedule on this draw's planned grid and pre-alignment
                reg_cfg = reg_config(plan, base=DemoConfig().reg.with_overrides(steps=args.reg_steps))
                uses = sorted(split.labeled(set_name)) if reg_cfg.loss.dice_weight > 0 else []
                key = hashlib.blake2b(json.dumps([reg_cfg.to_dict(), uses]).encode(), digest_size=4).hexdigest()
                learned = pretrain_registration(dataset, split, reg_cfg, out / "reg" / key, set_name)
            setups[(name, draw)] = DrawSetup(set_name, base, frontend(plan), learned)
    return split, setups


def acquisition(args: argparse.Namespace) -> Acquisition | None:
    """The ``--acquire`` options, checked; None without ``--acquire``."""
    if args.acquire is None:
        return None
    try:
        ks = tuple(int(k) for k in _items(args.acquire, "acquire"))
        weights = tuple(float(w) for w in _items(args.weights, "weights"))
    except ValueError:
        raise ValueError(f"--acquire {args.acquire!r} / --weights {args.weights!r}: comma-separated numbers") from None
    if len(weights) != 3:
        raise ValueError(f"--weights {args.weights!r}: three numbers (disagreement, atlas misfit, distance)")
    d, a, r = weights
    return Acquisition(ks, tuple(_items(args.rules, "rules")), SuggestConfig(disagreement=d, atlas_misfit=a, distance=r))


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    acq = acquisition(args)
    if args.tabulate:
        results = collect_results(out)
        # where the runs ran, as their markers say: --data is not needed and out/data need not be it
        write_tables(results, args.data.resolve() if args.data is not None else data_of(results), out, args.control)
        _report(out, len(results))
        if acq is not None:
            print(write_acquisition_tables(results, acq, out).read_text(), end="")
        return 0
    if args.seeds < 1 or args.first_seed < 0 or args.draws < 1 or args.patients < 2:
        raise ValueError(f"--seeds, --draws must be >= 1, --first-seed >= 0 and --patients >= 2, got {args.seeds}, "
                         f"{args.draws}, {args.first_seed} and {args.patients}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.reg_steps < 1:
        raise ValueError(f"--reg-steps must be >= 1, got {args.reg_steps}")
    if args.threads:
        torch.set_num_threads(args.threads)   # this command's process only
    methods, labeled = _items(args.methods, "methods"), _items(args.labeled, "labeled")
    backends = _items(args.backends, "backends") if any(m in REGISTRATION_METHODS for m in methods) else []
    build_config(args.config, args.overrides)   # refuse bad options before any work
    plan_runs(methods, backends, labeled, args.draws, seeds)  # and a bad grid

    data = args.data or generated_phantom(out, args.kind, args.difficulty, args.patients, not args.no_progress)
    dataset = open_dataset(data)
    split = load_split(args.split) if args.split is not None else dataset.default_split
    if split is None:
        raise CaseError(f"{data}: the folder has no split.json; pass --split FILE")
    split.check_patients(dataset.patient_ids, str(args.split or data))
    split, setups = draw_setups(args, dataset, split, labeled, backends, out)
    split = with_recorded_sets(split, out / "split.json")
    write_json(out / "split.json", split.to_dict())   # every draw's labeled patients, on record
    base = plan_runs(methods, backends, labeled, args.draws, seeds)
    results = run_grid(base, setups, dataset, split, out, progress=not args.no_progress)
    if acq is not None:
        split, added = run_acquisition(base, setups, acq, dataset, split, out, progress=not args.no_progress)
        results = [*results, *added]
    write_tables(collect_results(out), Path(data).resolve(), out, args.control)
    _report(out, len(results))
    if acq is not None:
        path = write_acquisition_tables(collect_results(out), acq, out)
        print(path.read_text(), end="")
        print(f"wrote {path} and {out / 'acquisition.csv'}")
    return 0
