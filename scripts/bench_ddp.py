"""Throughput of data-parallel training on this machine: training slices per second of one
``cctr train`` process against ``torchrun --nproc_per_node=N`` with the same global batch
(one torch thread per process), on a generated phantom.

    python scripts/bench_ddp.py --out runs/bench_ddp --procs 2 --iterations 60

Each run trains ``--method`` (default ``cct``) without validation; the rate is
``iterations x global batch / seconds`` of the training call, which ``cctr train`` prints.
The target of the scale issue is >= 1.6x for 2 CPU processes. Run it on a quiet machine:
other jobs on the same cores make both figures meaningless.

``--contention`` adds the ceiling the hardware sets: one process training alone on one
rank's share of the batch, against ``--procs`` such processes started together, each
independent (no gradient exchange). Their slowdown when together is what the cores' shared
caches and memory bandwidth cost before any communication, so the data-parallel speed-up
cannot beat (one process on the whole batch) / (the slowest of those started together).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CCTR = [sys.executable, "-m", "cctr.joint.app.cli"]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def seconds_of(process: subprocess.Popen) -> float:
    """Seconds of the training call, as ``cctr train`` reports it."""
    stdout, stderr = process.communicate()
    command = " ".join(process.args)
    if process.returncode != 0:
        raise SystemExit(f"failed: {command}\n{stderr[-2000:]}")
    found = re.search(r"iterations\) in (\d+) s", stdout)
    if not found:
        raise SystemExit(f"no timing in the output of {command}:\n{stdout}")
    return float(found.group(1))


def run(command: list[str]) -> float:
    return seconds_of(start(command))


def contention(common: list[str], out: Path, procs: int, batch: int) -> tuple[float, list[float]]:
    """Seconds of independent single processes on one rank's share of the global batch: one
    alone, then ``procs`` of them started together."""
    half = batch // 2 // procs   # each rank's labeled and unlabeled rows
    share = [*common, "--set", f"labeled_batch={half}", "--set", f"unlabeled_batch={half}"]
    folders = [out / f"share-{i}" for i in range(procs)]
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)
    alone = run([*CCTR, *share, "--out", str(folders[0])])
    shutil.rmtree(folders[0], ignore_errors=True)
    together = [seconds_of(p) for p in [start([*CCTR, *share, "--out", str(f)]) for f in folders]]
    return alone, together


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_ddp"))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--method", default="cct")
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--batch", type=int, default=8,
                   help="global batch, half labeled and half unlabeled (default 8: cpu-small's 4 + 4)")
    p.add_argument("--contention", action="store_true",
                   help="also time independent processes on one rank's share of the batch, alone and together")
    args = p.parse_args(argv)
    if args.batch % (2 * args.procs):
        p.error(f"--batch {args.batch} must split into equal labeled and unlabeled halves on {args.procs} processes")
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        subprocess.run([*CCTR, "data", "phantom", "--out", str(data), "--patients", str(args.patients)], check=True)
    common = ["train", "--data", str(data), "--labeled", "1", "--method", args.method, "--no-progress",
              "--set", f"iterations={args.iterations}", "--set", f"val_every={10 ** 6}",
              "--set", f"val_every={10 ** 6}",
              "--set", f"labeled_batch={args.batch // 2}", "--set", f"unlabeled_batch={args.batch // 2}"]
    rates = {}
    for procs in (1, args.procs):
        folder = args.out / f"run-{procs}"
        shutil.rmtree(folder, ignore_errors=True)
        launcher = CCTR if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            f"--nproc_per_node={procs}", "-m", "cctr.joint.app.cli"]
        seconds = run([*launcher, *common, "--out", str(folder)])
        rates[procs] = args.iterations * args.batch / seconds
        print(f"{procs} process(es): {seconds:.0f} s, {rates[procs]:.1f} slices/s")
    print(f"speed-up with {args.procs} processes: {rates[args.procs] / rates[1]:.2f}x (target >= 1.6x for 2)")
    if args.contention:
        alone, together = contention(common, args.out, args.procs, args.batch)
        one = args.iterations * args.batch / rates[1]
        print(f"one process on one rank's share of the batch: {alone:.0f} s alone, "
              + ", ".join(f"{t:.0f} s" for t in together) + f" with {args.procs} started together")
        print(f"ceiling without any gradient exchange: {one / max(together):.2f}x "
              f"(perfect cores would give {one / alone:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
