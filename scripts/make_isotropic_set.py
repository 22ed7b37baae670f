"""Write the isotropic measurement set of issue 16 (a geometry the cardiac defaults were never
tuned for): ``python scripts/make_isotropic_set.py --out runs/iso --patients 16 [--mr]``.

The generator lives with the tests (``tests/isotropic_set.py``), which use it at small sizes.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from isotropic_set import IsoConfig, write_isotropic_set  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patients", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mr", action="store_true", help="MR-like magnitudes instead of CT Hounsfield units")
    args = p.parse_args()
    cfg = replace(IsoConfig(), modality="MR" if args.mr else "CT")
    start = time.perf_counter()
    write_isotropic_set(args.out, args.patients, args.seed, cfg, channel_name="MR" if args.mr else "CT")
    print(f"wrote {args.patients} isotropic volumes to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
