"""Where the learned backend's test-time refinement spends its time, for one checkpoint: the
net's forward pass, the coarse pass, and the canonical-grid (fine) steps on the velocity or on
a composed map (docs/METHOD.md, "Test-time refinement"), in seconds per pair.

    python scripts/profile_refine.py --ckpt runs/reg/best.pt [--repeats 3] [--threads 1]
        [--steps 16] [--scale 2] [--fine 4] [--lr 0.1]

Each configuration runs through :func:`reg.backends.refine_displacement` on one pair of
smoothed random images of the checkpoint's canonical grid (the cost of a step does not depend
on what the images show), once untimed and then ``--repeats`` times; the median is printed.
The cost of a pass is the difference between two configurations that differ by that pass.
The placement front end (resampling, pre-alignment) is not included: ``cctr reg eval`` times
whole backends, this script the parts of one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from cctr.reg.backends import Refinement, refine_displacement
from cctr.reg.checkpoint import load_model
from cctr.reg.config import RegConfig
from cctr.reg.model import RegistrationNet


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="a cctr reg train checkpoint")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one per process on a shared CPU)")
    p.add_argument("--steps", type=int, default=16, help="coarse steps (the refine option)")
    p.add_argument("--scale", type=int, default=2, help="refine_scale")
    p.add_argument("--fine", type=int, default=4, help="refine_fine")
    p.add_argument("--lr", type=float, default=0.1, help="refine_lr")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or min(args.steps, args.fine) < 0 or args.scale < 1:
        p.error("--repeats and --threads must be >= 1, --steps and --fine >= 0, --scale >= 1")
    return args


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()   # one-time costs (allocations, autograd's first backward) are not a pair's
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(net: RegistrationNet, config: RegConfig, steps: int, scale: int, fine: int, lr: float,
            repeats: int) -> dict[str, float]:
    """Median seconds of each configuration and, by difference, of each pass, for one pair."""
    shape = tuple(config.grid.shape)
    if any(n % scale for n in shape):
        raise ValueError(f"--scale {scale} must divide the checkpoint's canonical grid {shape}")
    generator = torch.Generator().manual_seed(0)

    def image() -> torch.Tensor:   # (1, 1, Z, Y, X) in [0, 1], smooth enough for local NCC
        noise = torch.rand((1, 1, *shape), generator=generator)
        return F.avg_pool3d(noise, 3, stride=1, padding=1, count_include_pad=False)

    fixed, moving = image(), image()

    def refinement(coarse: int, fine_steps: int, field: str) -> Refinement:
        return Refinement(coarse, lr, config.loss.similarity, tuple(config.loss.ncc_window),
                          config.loss.smoothness_weight, scale, fine_steps, field)

    def timed(r: Refinement) -> float:
        return _median_seconds(lambda: refine_displacement(net, fixed, moving, r), repeats)

    with torch.no_grad():
        alone = _median_seconds(lambda: net(fixed, moving), repeats)
    coarse = timed(refinement(steps, 0, "velocity"))
    velocity = timed(refinement(steps, fine, "velocity"))
    composed = timed(refinement(steps, fine, "composed"))
    return {
        "net alone": alone,
        f"{steps} coarse": coarse,
        f"{steps} coarse + {fine} fine, velocity": velocity,
        f"{steps} coarse + {fine} fine, composed": composed,
        "coarse pass": coarse - alone,
        "fine pass, velocity": velocity - coarse,
        "fine pass, composed": composed - coarse,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        net, config = load_model(args.ckpt)
        seconds = profile(net, config, args.steps, args.scale, args.fine, args.lr, args.repeats)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.ckpt}: canonical grid {tuple(config.grid.shape)}, {args.threads} torch thread(s), "
          f"median of {args.repeats}")
    print("| part | s / pair |\n| --- | ---: |")
    for name, value in seconds.items():
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
