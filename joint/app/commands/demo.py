"""``cctr demo``: the main job on the embedded phantom, end to end (see :mod:`joint.app.demo`).

    cctr demo [--out DIR] [--patients N] [--seed S] [--config YAML] [--set key=value ...]
              [--threads N] [--no-progress]

Generates the phantom, pretrains the learned registration, trains ``cctr`` guided by it,
predicts and scores the test volumes and writes ``DIR/report.md`` with figures. The options
start from :class:`joint.app.demo.DemoConfig`'s defaults, then ``--config`` (a YAML file of its
options: ``patients``, ``seed``, ``labeled``, ``reg``, ``seg``), then every ``--set``
(``--set seg.iterations=800 --set reg.train.steps=300``), then ``--patients`` and ``--seed``
(which seeds the phantom, the registration and the segmentation). Re-running with the same
options resumes and skips every stage already done. The process computes with ``--threads``
torch threads, 1 by default: on a 2-core CPU shared with other jobs, two threads per process
spin-wait on each other and ran the demo's training steps 5-15x slower.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from cctr.joint.app.demo import DemoConfig, run_demo, with_seed
from cctr.seg.config import apply_overrides, load_config
from cctr.seg.report import summary_markdown


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run and report folder (default runs/demo)")
    p.add_argument("--patients", type=int, default=None, help=f"phantom patients (default {DemoConfig.patients})")
    p.add_argument("--seed", type=int, default=None, help="seed of the phantom, registration and segmentation (default 0)")
    p.add_argument("--config", type=Path, default=None, help="YAML file of demo options over the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option, e.g. --set seg.iterations=800 --set reg.train.steps=300")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process; 0 keeps torch's default, one per core (default 1: on a CPU "
                        "shared with other jobs, more threads spin-wait on each other and run several times slower)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def build_config(config: Path | None, overrides: list[str], patients: int | None, seed: int | None) -> DemoConfig:
    """The demo's options in the order the module docstring gives."""
    cfg = DemoConfig() if config is None else load_config(config, DemoConfig())
    cfg = apply_overrides(cfg, overrides)
    if patients is not None:
        cfg = replace(cfg, patients=patients)
    if seed is not None:
        if seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {seed}")
        cfg = with_seed(cfg, seed)
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args.config, args.overrides, args.patients, args.seed)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)   # this command's process only
    result = run_demo(cfg, args.out, progress=not args.no_progress)
    print(summary_markdown(result.summary, f"Test volumes, {cfg.seg.method} (student A)"))
    print(f"report: {result.paths.report}")
    return 0
