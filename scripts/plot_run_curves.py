"""The training curves of a finished (or running) segmentation run as one PNG, the figure
``cctr demo`` draws: registration pretraining, the student's losses, and the validation Dice of
both students beside the registration's (the atlas labels warped onto the validation volumes,
logged by the validation gate). In a ``cctr-coupled`` run that last curve moves, so the figure
shows the two learners side by side (docs/METHOD.md part 9).

    python scripts/plot_run_curves.py --run RUN [--reg-log REG/tb] [--student a] --out FIGURE.png

``RUN`` is a ``cctr train`` output folder (``RUN/tb``), or a run folder inside a benchmark.
``--reg-log`` is the TensorBoard folder of the net's pretraining (``cctr reg train --out REG``
writes ``REG/tb``); without it the first panel stays empty.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from cctr.joint.app.figures import plot_curves


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="the run folder (holds tb/)")
    p.add_argument("--reg-log", type=Path, default=None, help="TensorBoard folder of the registration pretraining")
    p.add_argument("--student", default="a", help="whose losses the middle panel shows (default: a)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    if not (args.run / "tb").is_dir():
        p.error(f"{args.run}: no tb/ folder here; --run takes a cctr train output folder")
    if args.reg_log is not None and not args.reg_log.is_dir():
        p.error(f"--reg-log {args.reg_log}: not a folder")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(plot_curves(args.out, args.reg_log, args.run / "tb", args.student))
    return 0


if __name__ == "__main__":
    sys.exit(main())
