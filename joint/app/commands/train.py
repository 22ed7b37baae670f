"""``cctr train``: train segmentation students with one method on a dataset folder.

    cctr train --data DIR --split FILE --labeled NAME --method M --out DIR
               [--config YAML_OR_PRESET] [--resume] [--set key=value ...]

               [--reg-backend SPEC]

The configuration starts from the ``cpu-small`` preset with the dataset's planned student
settings (input size, intensity normalisation: ``cctr plan``), or from ``--config`` (a preset
name such as ``paper``, or a YAML file applied over ``cpu-small``) as given, then every ``--set`` (any option of
:class:`joint.config.JointConfig`: the seg options plus the registration ones, nested ones
with dots, e.g. ``oracle.policy=fused``), then the explicit flags (``--reg-backend`` sets
``oracle.backend``). Classical registration backends run on the dataset's planned grid and
pre-alignment. The run folder gets ``config.yaml``, ``best.pt``,
``last.pt`` and TensorBoard logs in ``tb/``. ``registration-only`` trains nothing: it writes
the propagated labels of the test split and their scores into the run folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from cctr.joint.config import JointConfig, build_config
from cctr.joint.methods import METHODS, REGISTRATION_ONLY, registration_only, trainer_methods
from cctr.joint.plan import frontend, plan_for, seg_overrides
from cctr.seg.config import PRESETS
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import LAYOUTS, open_dataset
from cctr.seg.data.split import load_split
from cctr.seg.distributed import world_from_environment
from cctr.seg.train import train


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (any layout open_dataset reads)")
    p.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset folder's split.json)")
    p.add_argument("--labeled", default=None, help="labeled set name in the split, or 'all' (default: the config's, '1')")
    p.add_argument("--method", choices=list(METHODS), default=None, help="default: the config's, 'cct'")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, config.yaml and TensorBoard logs")
    p.add_argument("--config", default=None,
                   help=f"a preset ({', '.join(sorted(PRESETS))}) or a YAML file of options over cpu-small")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option, e.g. --set iterations=500 --set student_a.widths=[8,16,32,64]")
    p.add_argument("--reg-backend", default=None, metavar="SPEC",
                   help="registration for cctr-rsl, cctr, cctr-coupled (learned only), registration-only: 'learned:CKPT', 'sitk-demons', "
                        "'ants-syn' or 'identity'")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="force a dataset layout instead of detecting it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.data, args.layout)
    if args.split is not None:
        split = load_split(args.split)
    elif dataset.default_split is not None:
        split = dataset.default_split
    else:
        raise CaseError(f"{args.data}: the folder has no split.json; pass --split FILE")
    try:
        def config(planned: Optional[dict]) -> JointConfig:
            return build_config(args.config, args.overrides, method=args.method, labeled=args.labeled, out_dir=args.out,
                                reg_backend=args.reg_backend, planned=planned)
        # the plan reads the labels of the run's labeled set only, so that set is known first
        plan = plan_for(dataset, split, config(None).labeled)
        cfg = config(seg_overrides(plan) if args.config is None else None)
    except ValueError as exc:
        raise CaseError(str(exc)) from exc
    if cfg.method == REGISTRATION_ONLY:
        done = registration_only(cfg, dataset, split, frontend=frontend(plan), progress=not args.no_progress)
        print(f"propagated labels to {len(done.predictions)} {cfg.eval_subset} volumes -> {done.out_dir}")
        print(f"mean foreground Dice {done.summary.overall['dice'].mean:.4f}; see {done.out_dir / 'summary.md'}")
        return 0
    try:
        result = train(cfg, dataset, split, methods=trainer_methods(frontend(plan)), resume=args.resume,
                       progress=not args.no_progress)
    except ValueError as exc:
        raise CaseError(str(exc)) from exc
    if not world_from_environment().is_main:
        return 0   # under torchrun, rank 0 reports for all
    print(f"trained {cfg.method} ({cfg.iterations} iterations) in {result.seconds:.0f} s -> {result.out_dir}")
    if result.best_checkpoint is not None:
        print(f"best validation Dice (student A): {result.best_score:.4f} "
              f"at step {result.best_step} -> {result.best_checkpoint}")
    print(f"last checkpoint: {result.last_checkpoint}")
    return 0
