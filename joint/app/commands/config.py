"""``cctr config show``: the resolved configuration a run would use, one option a line with its
value, its default and what it does.

    cctr config show [--data DIR] [--split FILE] [--config YAML_OR_PRESET] [--set key=value ...]
                     [--method M] [--reg-backend SPEC]

Sections: ``cctr train`` (the segmentation options, with the dataset's plan when ``--data`` is
given and ``--config`` is not, as ``cctr train`` applies it), ``cctr reg train`` (the
registration pretraining options, planned likewise; ``--set reg.section.key=value``), the options
a backend spec takes after ``?`` (with ``--reg-backend``, its values), and ``cctr demo``'s own.
Options that differ from their default are marked ``*``.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from cctr.joint.app.demo import DemoConfig
from cctr.joint.config import JointConfig, as_joint_config, build_config
from cctr.joint.plan import plan_for, reg_config, seg_overrides
from cctr.reg.classical import BSplineParams, DemonsParams
from cctr.reg.config import RegConfig
from cctr.reg.refine import RefineConfig
from cctr.reg.spec import REFINE_KEYS, BackendSpec
from cctr.seg.config import OptionRow, apply_overrides, option_rows, preset
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split


def configure(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="print every option a run would use, with its default and description")
    show.add_argument("--data", type=Path, default=None, help="dataset folder: apply its plan, as cctr train does")
    show.add_argument("--split", type=Path, default=None, help="split JSON (default: the dataset's own)")
    show.add_argument("--config", default=None, help="a preset (cpu-small, paper) or a YAML file, as cctr train takes")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override an option as cctr train does; reg.SECTION.KEY=VALUE for the registration ones")
    show.add_argument("--method", default=None, help="as cctr train --method")
    show.add_argument("--reg-backend", default=None, metavar="SPEC", help="as cctr train --reg-backend")
    show.set_defaults(func=run_show)


def spec_rows(spec: BackendSpec | None) -> list[OptionRow]:
    """The options a backend spec takes after ``?``, named ``KIND?key``, with ``spec``'s values
    where it is of that kind."""
    rows = []
    refine = spec.refine if spec is not None and spec.is_learned else RefineConfig()
    by_field = {v: k for k, v in REFINE_KEYS.items()}
    for row in option_rows(refine, RefineConfig()):
        rows.append(OptionRow(f"learned?{by_field[row.name]}", row.value, row.default, row.doc))
    for kind, cls in (("sitk-demons", DemonsParams), ("sitk-bspline", BSplineParams)):
        params = spec.params if spec is not None and spec.kind == kind else cls()
        rows += [OptionRow(f"{kind}?{r.name}", r.value, r.default, r.doc) for r in option_rows(params, cls())]
    prealign = spec.prealign if spec is not None and spec.prealign else ""
    rows.append(OptionRow("classical?prealign", prealign, "", "override the planned pre-alignment: none, search, moments"))
    return rows


def all_rows(seg: JointConfig, reg: RegConfig, spec: BackendSpec | None, demo: DemoConfig = DemoConfig()
             ) -> dict[str, list[OptionRow]]:
    """Section title -> its option rows."""
    base = DemoConfig()
    demo_own = [f.name for f in fields(DemoConfig) if f.name not in ("reg", "seg")]
    return {
        "cctr train": option_rows(seg, as_joint_config(preset("cpu-small"))),
        "cctr reg train": option_rows(reg, RegConfig(), "reg."),
        "backend spec options (SPEC?key=value)": spec_rows(spec),
        "cctr demo (besides seg.* and reg.*)": [r for r in option_rows(demo, base) if r.name in demo_own],
    }


def format_rows(sections: dict[str, Sequence[OptionRow]]) -> str:
    lines = []
    for title, rows in sections.items():
        lines.append(f"# {title}")
        width = max(len(r.name) + len(_text(r.value)) for r in rows) + 4
        for r in rows:
            mark = "*" if r.value != r.default else " "
            head = f"{mark} {r.name} = {_text(r.value)}"
            lines.append(f"{head:<{width + 2}} # {r.doc} (default {_text(r.default)})")
        lines.append("")
    return "\n".join(lines)


def _text(value: object) -> str:
    return "null" if value is None else str(value).replace(" ", "")


def run_show(args: argparse.Namespace) -> int:
    seg_sets = [o for o in args.overrides if not o.startswith("reg.")]
    reg_sets = [o[len("reg."):] for o in args.overrides if o.startswith("reg.")]
    seg, reg = build_config(args.config, seg_sets, method=args.method, reg_backend=args.reg_backend), RegConfig()
    if args.data is not None:
        dataset = open_dataset(args.data)
        split = load_split(args.split) if args.split is not None else dataset.default_split
        plan = plan_for(dataset, split, seg.labeled)
        if args.config is None:
            seg = build_config(None, seg_sets, method=args.method, reg_backend=args.reg_backend,
                               planned=seg_overrides(plan))
        reg = reg_config(plan)
    reg = apply_overrides(reg, reg_sets)
    print(format_rows(all_rows(seg, reg, seg.oracle.spec)), end="")
    return 0
