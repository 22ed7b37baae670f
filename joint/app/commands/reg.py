"""``cctr reg``: pretrain the learned registration network and compare registration backends.

- ``train --data DIR --out DIR [--split FILE] [--config YAML] [--steps N] [--resume]
  [--labeled NAME]``: pretrain on the TRAINING patients of the split (labels of the
  ``--labeled`` set are read by the plan, and by the loss only when the config's
  ``loss.dice_weight`` > 0), validating on the validation patients; see :mod:`reg.train`.
- ``eval --data DIR --backend SPEC [--backend SPEC ...] --out DIR [--split FILE]
  [--subset test|val|train] [--pairs N] [--seed S] [--intra] [--device cpu|cuda]``: per-pair CSV and a markdown
  table, one row per backend; see :mod:`joint.app.reg_eval`.

Without ``--split`` the split saved with the dataset (``split.json``) is used. Without
``--config`` both use the dataset's plan (:mod:`joint.plan`, ``DATA/cctr_plan.json``, measured
on first use): train for the whole registration config, eval for the classical backends' grid
and pre-alignment. ``--set section.key=value`` overrides any field; the run's ``config.yaml``
holds the values used and ``config_origin.json`` where they came from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cctr.reg.backends import load_backend
from cctr.reg.placement import FrontEnd
from cctr.reg.config import RegConfig
from cctr.joint.plan import labeled_or_default, plan_for, plan_path, reg_config
from cctr.seg.atomic import write_json
from cctr.seg.config import apply_overrides, load_config
from cctr.reg.train import Volume
from cctr.seg.data.case import CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import Split, load_split
from cctr.seg.train import training_device
from cctr.joint.app.stages import run_registration_training
from cctr.joint.app.reg_eval import evaluate, labeled_pairs, summarize_backends, table_markdown, write_report


def configure(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="reg_command", metavar="ACTION")
    actions.required = True

    tr = actions.add_parser("train", help="pretrain the learned registration network on a split's training volumes")
    data_args(tr)
    tr.add_argument("--out", type=Path, required=True, help="run folder: config.yaml, best.pt, last.pt, tb/")
    tr.add_argument("--config", type=Path, default=None,
                    help="YAML config (default: the dataset's plan over the built-in CPU default; configs/reg_default.yaml is the cardiac one)")
    _set_arg(tr)
    tr.add_argument("--steps", type=int, default=None, help="override train.steps")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--labeled", default=None,
                    help="labeled set of the split whose labels the plan reads (default: '1' when the split has it) "
                         "and Dice supervision may use")
    tr.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                    help="skip up to N steps whose loss or gradient is NaN/inf, with a warning (default 0: stop at the first)")
    tr.set_defaults(func=run_train)

    ev = actions.add_parser("eval", help="score registration backends on labeled pairs of a split")
    data_args(ev)
    ev.add_argument("--backend", action="append", required=True, metavar="SPEC",
                    help="identity | learned:CKPT | sitk-demons | sitk-bspline | ants-syn (repeat to compare)")
    ev.add_argument("--out", type=Path, required=True, help="folder for pairs.csv and summary.md")
    ev.add_argument("--subset", choices=("test", "val", "train"), default="test", help="patients to pair (default test)")
    ev.add_argument("--pairs", type=int, default=20, help="number of (fixed, moving) pairs (default 20)")
    ev.add_argument("--seed", type=int, default=0, help="seed drawing the pairs (default 0)")
    ev.add_argument("--intra", action="store_true", help="also pair the frames of one patient")
    ev.add_argument("--labeled", default=None,
                    help="labeled set whose labels the plan of the classical backends' front end reads (default: '1')")
    ev.add_argument("--device", default="cpu", help="torch device of learned backends (default cpu; e.g. cuda)")
    ev.add_argument("--config", type=Path, default=None,
                    help="YAML config whose grid and prealign the classical backends use (default: the dataset's plan)")
    _set_arg(ev)
    ev.set_defaults(func=run_eval)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="reg_overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one registration config field, e.g. --set grid.shape=[16,64,64] --set prealign.method=none")


def _chosen_config(args: argparse.Namespace) -> tuple[RegConfig, str]:
    """``--config`` if given, else the dataset's plan over the defaults; then every ``--set``.
    Returns the config and where it came from."""
    if args.config is not None:
        config, source = load_config(args.config, RegConfig()), str(args.config)
    else:
        dataset, split = open_data(args)
        plan = plan_for(dataset, split, labeled_or_default(split, args.labeled))
        config, source = reg_config(plan), f"plan {plan_path(dataset)}"
    return apply_overrides(config, args.reg_overrides), source


def data_args(p: argparse.ArgumentParser) -> None:
    """``--data``, ``--split`` and ``--layout``, read back by :func:`open_data`."""
    p.add_argument("--data", type=Path, required=True, help="dataset folder (any layout open_dataset reads)")
    p.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset's own split)")
    p.add_argument("--layout", default=None, help="force a layout instead of detecting it")


def open_data(args: argparse.Namespace) -> tuple[Dataset, Split]:
    """The dataset and split of :func:`data_args`' options (the split JSON, else the dataset's own)."""
    dataset = open_dataset(args.data, args.layout)
    if args.split is not None:
        return dataset, load_split(args.split)
    if dataset.default_split is None:
        raise CaseError(f"{args.data}: has no split of its own; pass --split FILE")
    return dataset, dataset.default_split


def _volumes(dataset: Dataset, patients, with_labels: set[str]) -> list[Volume]:
    out = []
    for ref in dataset.of_patients(patients):
        case = ref.load()
        label = case.label if case.patient_id in with_labels else None
        out.append(Volume(case.case_id, case.patient_id, case.image, case.spacing, label))
    return out


def run_train(args: argparse.Namespace) -> int:
    try:
        resuming_stored = args.resume and args.config is None and (args.out / "config.yaml").is_file()
        if resuming_stored:
            config = apply_overrides(load_config(args.out / "config.yaml", RegConfig()), args.reg_overrides)
        else:
            config, source = _chosen_config(args)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        config = config.with_overrides(steps=args.steps)
        training_device(config.train.device)   # a CUDA device this machine lacks is refused before any work
        if not resuming_stored and not (args.out / "last.pt").exists():  # an existing run refuses below; keep its record
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "config_origin.json",
                       {"source": source, "overrides": list(args.reg_overrides), "steps": args.steps})
        dataset, split = open_data(args)
        if config.loss.dice_weight > 0 and args.labeled is None:
            raise ValueError("the config asks for Dice supervision (loss.dice_weight > 0): name the labeled set with --labeled")
        labeled = set(split.labeled(args.labeled)) if args.labeled else set()
        train_volumes = _volumes(dataset, split.train, labeled)
        val_volumes = _volumes(dataset, split.val, set(split.val))
        best = run_registration_training(config, train_volumes, val_volumes, len(dataset.class_names), args.out,
                                         resume=args.resume, max_bad_steps=args.skip_nonfinite)
    except ValueError as exc:
        raise CaseError(str(exc)) from exc
    print(f"registration net: {best}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    try:
        if args.pairs < 1:
            raise ValueError(f"--pairs must be >= 1, got {args.pairs}")
        front = _chosen_config(args)[0]
        backends = [load_backend(spec, FrontEnd(front.grid, front.prealign), args.device) for spec in args.backend]
        dataset, split = open_data(args)
        patients = {"test": split.test, "val": split.val, "train": split.train}[args.subset]
        pairs = labeled_pairs(dataset, patients, args.pairs, args.seed, intra_patient=args.intra)
        if not pairs:
            raise ValueError(f"no labeled pairs among the {args.subset} patients {list(patients)}; try --intra or another --subset")
        results = evaluate(backends, pairs, dataset.class_names, show_progress=sys.stderr.isatty())
    except ValueError as exc:
        raise CaseError(str(exc)) from exc
    csv_path, md_path = write_report(args.out, results, dataset.class_names)
    print(table_markdown(summarize_backends(results, dataset.class_names), dataset.class_names), end="")
    print(f"wrote {csv_path} and {md_path}")
    return 0
