"""``cctr plan DATA``: measure a dataset's fingerprint and derive its plan (registration grid,
pre-alignment, NCC window, students' slicing axis, input size and normalisation), saved as
``DATA/cctr_plan.json`` (:mod:`joint.plan` documents the file) and printed.

    cctr plan DATA [--split FILE] [--labeled NAME] [--layout L] [--force] [--budget VOXELS] [--margin M]

The plan reads the images of the split's training patients and the labels of one labeled set
(``--labeled``, default ``1``): never the labels of volumes a run treats as unlabeled.

Training commands compute the same plan on first use when the file is missing; run this to
see it, to re-measure (``--force``) or to plan with other rules (a GPU affords a larger
``--budget`` of canonical voxels).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cctr.joint.plan import format_plan, labeled_or_default, plan_for, plan_path
from cctr.reg.plan import PlanRules
from cctr.seg.data.readers import LAYOUTS, open_dataset
from cctr.seg.data.split import load_split


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="dataset folder")
    p.add_argument("--split", type=Path, default=None, help="split JSON whose training patients are measured (default: the dataset's own; none: every patient)")
    p.add_argument("--labeled", default=None,
                   help="labeled set of the split whose labels the plan may read (default: '1' when the split has it)")
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="force a layout instead of detecting it")
    p.add_argument("--force", action="store_true", help="measure again even when a matching plan is saved")
    p.add_argument("--budget", type=int, default=PlanRules.voxel_budget, help=f"canonical grid voxels at most (default {PlanRules.voxel_budget})")
    p.add_argument("--margin", type=float, default=PlanRules.margin, help=f"extent to cover / extent measured (default {PlanRules.margin})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.data, args.layout)
    split = load_split(args.split) if args.split is not None else dataset.default_split
    rules = PlanRules(voxel_budget=args.budget, margin=args.margin)
    plan = plan_for(dataset, split, labeled_or_default(split, args.labeled), rules, force=args.force)
    print(format_plan(plan))
    print(f"saved in {plan_path(dataset)}")
    return 0
