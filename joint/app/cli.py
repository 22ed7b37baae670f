"""The ``cctr`` command line: one verb per pipeline stage, each defined in ``joint/app/commands/``.

Each command module exposes ``configure(parser)``; it adds the verb's options and sets
``func(args) -> int`` as the parser default. Only the module of the verb being run is
imported, so ``cctr --help`` and a mistyped verb answer without loading torch. Every
failure a user can cause or meet (bad input, an OS fault such as a read-only folder or a full
disk, a missing optional extra, an impossible configuration, Ctrl-C) is one line on stderr
and the exit status :mod:`joint.app.exits` gives it, no traceback; set ``CCTR_DEBUG=1`` to
see the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from cctr.joint.app.exits import INTERRUPTED, describe, exit_status

# verb -> (module, one-line help); the order is the order of the pipeline
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("cctr.joint.app.commands.data", "generate, inspect and split datasets"),
    "config": ("cctr.joint.app.commands.config", "print the resolved options a run would use, with defaults and descriptions"),
    "plan": ("cctr.joint.app.commands.plan", "fingerprint a dataset and derive its registration and student plan"),
    "reg": ("cctr.joint.app.commands.reg", "pretrain the registration net; compare registration backends"),
    "train": ("cctr.joint.app.commands.train", "train segmentation students (supervised, cross teaching, ...)"),
    "predict": ("cctr.joint.app.commands.predict", "segment NIfTI volumes with a trained student"),
    "suggest": ("cctr.joint.app.commands.suggest",
                "rank unlabeled training patients for annotation from a trained run (what to label next)"),
    "eval": ("cctr.joint.app.commands.evaluate", "score predicted label maps against references (3D Dice, HD95, ASD in mm)"),
    "demo": ("cctr.joint.app.commands.demo", "the whole pipeline on the embedded phantom: registration, cctr, 3D report"),
    "benchmark": ("cctr.joint.app.commands.benchmark",
                  "run the methods x backends x labeled sets x seeds grid; CSV, table, plot"),
    "inspect": ("cctr.joint.app.commands.inspect", "read back what runs logged: training curves, diagnostics tables"),
}


def build_parser(verb: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser with every verb listed; only ``verb`` (None: every verb) gets its options,
    which means importing its module."""
    parser = argparse.ArgumentParser(
        prog="cctr",
        description="Semi-supervised 3D segmentation guided by learned registration (CCT-R).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if verb is None or name == verb:
            importlib.import_module(module).configure(p)
    return parser


def _verb(argv: Sequence[str]) -> str:
    """The verb being run ('' for none yet): the first argument that is not an option."""
    return next((a for a in argv if not a.startswith("-")), "")


# what to do after Ctrl-C, by verb: a trainer resumes from its last checkpoint, the pipelines
# skip what is finished, everything else simply runs again (its outputs are written whole or not at all)
_AFTER_INTERRUPT = {
    "train": "add --resume to the same command to continue from the run's last.pt",
    "reg train": "add --resume to the same command to continue from the run's last.pt",
    "benchmark": "run the same command again: finished runs are kept and the interrupted one resumes",
    "demo": "run the same command again: finished stages are kept and the interrupted one resumes",
}


def _action(args: argparse.Namespace) -> str:
    """``'reg train'``, ``'train'``, ...: the verb and, for verbs with actions, the action."""
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else args.command


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_verb(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        status = exit_status(exc)
        if status is None or os.environ.get("CCTR_DEBUG"):
            raise
        if status == INTERRUPTED:
            after = _AFTER_INTERRUPT.get(_action(args), "run the same command again")
            print(f"cctr: interrupted; every file written so far is complete; {after}", file=sys.stderr)
        else:
            print(f"cctr: error: {describe(exc)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
