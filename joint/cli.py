"""The ``cctr`` command line: one verb per pipeline stage, each defined in ``joint/commands/``.

Each command module exposes ``register(subparsers)``; it adds its verb and sets
``func(args) -> int`` as the parser default. Bad input surfaces as a one-line error
(``CaseError``, ``FileNotFoundError``, ``ValueError``) and exit status 2, no traceback;
set ``CCTR_DEBUG=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from seg.data.case import CaseError

COMMAND_MODULES = (
    "joint.commands.data",
    "joint.commands.reg",
    "joint.commands.train",
    "joint.commands.predict",
    "joint.commands.evaluate",
    "joint.commands.demo",
    "joint.commands.benchmark",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cctr",
        description="Semi-supervised 3D segmentation guided by learned registration (CCT-R).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CaseError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        if os.environ.get("CCTR_DEBUG"):
            raise
        print(f"cctr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
