"""Benchmark of the segmentation baselines (issue 4): ``supervised``, ``ct`` and ``cct`` on the
phantom with labeled set '1' (one patient, both frames), 3 seeds each, the default CPU
configuration; prints the 3D Dice / HD95 table of student A on the test split.

    python scripts/bench_seg.py [--out runs/bench_seg] [--patients 20] [--seeds 0 1 2]
                                [--methods supervised ct cct] [--set key=value ...] [--threads N]

Each run goes to ``OUT/<method>/seed<k>``; a finished run found there is scored again, not
retrained, and an interrupted one is resumed. The best validation checkpoint is scored. The
table is also written to ``OUT/bench_seg.md``. Targets: mean Dice ct > supervised, cct >= ct.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cctr.seg.config import apply_overrides, preset
from cctr.seg.data.phantom import write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.inference import load_students
from cctr.seg.metrics import score_case
from cctr.seg.train import train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_seg"))
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: generate a phantom in OUT/phantom)")
    p.add_argument("--patients", type=int, default=20, help="phantom patients when generating")
    p.add_argument("--phantom-seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["supervised", "ct", "cct"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--labeled", default="1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=None, help="torch threads for this process (default: torch's)")
    return p.parse_args(argv)


def score_run(ckpt: Path, cases) -> dict[str, float]:
    """Student A of ``ckpt`` on ``cases``: mean over cases of the class-mean Dice and HD95."""
    trained = load_students(ckpt)
    n = len(trained.class_names)
    dice, hd95, per_class = [], [], {c: [] for c in range(1, n)}
    for case in cases:
        scores = score_case(trained.predict(case.image, "a"), case.label, case.spacing, n)
        dice.append(np.mean([s.dice for s in scores.values()]))
        hd95.append(np.mean([s.hd95 for s in scores.values()]))
        for c, s in scores.items():
            per_class[c].append(s.dice)
    out = {"dice": float(np.mean(dice)), "hd95": float(np.mean(hd95))}
    out.update({f"dice_{trained.class_names[c]}": float(np.mean(v)) for c, v in per_class.items()})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data or args.out / "phantom"
    if args.data is None and not (data_dir / "dataset.json").is_file():
        write_phantom(data_dir, args.patients, seed=args.phantom_seed)
    dataset = open_dataset(data_dir)
    split = dataset.default_split
    if split is None:
        print(f"{data_dir}: no split.json", file=sys.stderr)
        return 2
    test_cases = [ref.load() for ref in dataset.of_patients(split.test)]

    rows = []
    for method in args.methods:
        for seed in args.seeds:
            base = apply_overrides(preset("cpu-small"), args.overrides)
            cfg = replace(base, method=method, seed=seed, labeled=args.labeled,
                          out_dir=str(args.out / method / f"seed{seed}"))
            last = Path(cfg.out_dir) / "last.pt"
            done = last.is_file() and torch.load(last, map_location="cpu", weights_only=True)["step"] >= cfg.iterations
            wall, cpu = float("nan"), float("nan")
            if not done:
                t0, c0 = time.perf_counter(), time.process_time()
                train(cfg, dataset, split, resume=last.is_file(), progress=sys.stderr.isatty())
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            ckpt = Path(cfg.out_dir) / "best.pt"
            scores = score_run(ckpt if ckpt.is_file() else last, test_cases)
            rows.append({"method": method, "seed": seed, "wall_s": wall, "cpu_s": cpu, **scores})
            print(f"{method:>10} seed {seed}: Dice {scores['dice']:.4f}  HD95 {scores['hd95']:.2f} mm  "
                  f"train {wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)

    table = format_table(rows, args, len(test_cases))
    print(table)
    (args.out / "bench_seg.md").write_text(table + "\n")
    return 0


def format_table(rows: list[dict], args: argparse.Namespace, num_cases: int) -> str:
    class_keys = [k for k in rows[0] if k.startswith("dice_")]
    lines = [
        f"Student A on the test split ({num_cases} volumes), labeled set {args.labeled!r}, "
        f"seeds {args.seeds}, cpu-small {' '.join(args.overrides)}".rstrip(),
        "",
        "| method | Dice per seed | Dice mean ± std | HD95 mm mean ± std | "
        + " | ".join(k[5:] + " Dice" for k in class_keys) + " | train wall s per run |",
        "|---" * (5 + len(class_keys)) + "|",
    ]
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        dice = np.array([r["dice"] for r in mine])
        hd = np.array([r["hd95"] for r in mine])
        walls = [f"{r['wall_s']:.0f}" for r in mine]
        lines.append(
            f"| {method} | {' '.join(f'{d:.4f}' for d in dice)} | {dice.mean():.4f} ± {dice.std():.4f} | "
            f"{hd.mean():.2f} ± {hd.std():.2f} | "
            + " | ".join(f"{np.mean([r[k] for r in mine]):.4f}" for k in class_keys)
            + f" | {' '.join(walls)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
