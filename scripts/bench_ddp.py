"""Throughput of data-parallel training on this machine: training slices per second of one
``cctr train`` process against ``torchrun --nproc_per_node=N`` with the same global batch
(one torch thread per process), on a generated phantom.

    python scripts/bench_ddp.py --out runs/bench_ddp --procs 2 --iterations 60

Each run trains ``--method`` (default ``cct``) without validation; the rate is
``iterations x global batch / seconds`` of the training call, which ``cctr train`` prints.
The target of the scale issue is >= 1.6x for 2 CPU processes. Run it on a quiet machine:
other jobs on the same cores make both figures meaningless.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CCTR = [sys.executable, "-m", "joint.app.cli"]


def run(command: list[str]) -> float:
    """Seconds of the training call, as ``cctr train`` reports it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    found = re.search(r"iterations\) in (\d+) s", done.stdout)
    if not found:
        raise SystemExit(f"no timing in the output of {' '.join(command)}:\n{done.stdout}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_ddp"))
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--method", default="cct")
    p.add_argument("--patients", type=int, default=8)
    args = p.parse_args(argv)
    data = args.out / "data"
    if not (data / "dataset.json").is_file():
        subprocess.run([*CCTR, "data", "phantom", "--out", str(data), "--patients", str(args.patients)], check=True)
    common = ["train", "--data", str(data), "--labeled", "1", "--method", args.method, "--no-progress",
              "--set", f"iterations={args.iterations}", "--set", f"val_every={10 ** 6}",
              "--set", f"checkpoint_every={10 ** 6}", "--set", "overlays=false"]
    global_batch = 8  # cpu-small: 4 labeled + 4 unlabeled, split over the processes
    rates = {}
    for procs in (1, args.procs):
        folder = args.out / f"run-{procs}"
        shutil.rmtree(folder, ignore_errors=True)
        launcher = CCTR if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            f"--nproc_per_node={procs}", "-m", "joint.app.cli"]
        seconds = run([*launcher, *common, "--out", str(folder)])
        rates[procs] = args.iterations * global_batch / seconds
        print(f"{procs} process(es): {seconds:.0f} s, {rates[procs]:.1f} slices/s")
    print(f"speed-up with {args.procs} processes: {rates[args.procs] / rates[1]:.2f}x (target >= 1.6x for 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
