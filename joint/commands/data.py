"""``cctr data``: dataset utilities (phantom generation, montage, summary). Filled by the foundation work."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate, inspect and split datasets")
    p.add_subparsers(dest="data_command", metavar="ACTION").required = True
