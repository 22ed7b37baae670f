"""Time ``cctr data phantom --patients N`` (a fresh process, as a user runs it) and the reload
of every volume of the result through :func:`seg.data.readers.open_dataset`; print seconds.

    python scripts/bench_phantom.py [--patients 50] [--seed 0] [--keep DIR]

Target (issue 2): 50 patients in at most 30 s on the project's 2-core CPU machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cctr.seg.data.readers import open_dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="write the phantom here and keep it")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-phantom-"))
    out = args.keep if args.keep is not None else scratch / "phantom"
    try:
        cmd = [sys.executable, "-m", "cctr.joint.app.cli", "data", "phantom", "--out", str(out),
               "--patients", str(args.patients), "--seed", str(args.seed)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        generate_s = time.perf_counter() - start

        start = time.perf_counter()
        dataset = open_dataset(out)
        voxels = sum(ref.load().image.size for ref in dataset.refs)
        reload_s = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20

        print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
        print(f"generate {args.patients} patients: {generate_s:.1f} s")
        print(f"reload {len(dataset.refs)} volumes ({voxels / 1e6:.1f} M voxels, {size_mb:.0f} MiB on disk): {reload_s:.1f} s")
    finally:
        shutil.rmtree(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
