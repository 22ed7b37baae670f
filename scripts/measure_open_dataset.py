"""Measure how long opening a large slice-based release takes (it should only index names)
and how long stacking one training volume back from its slices takes.

Writes a fake TransUNet Synapse folder of CASES x SLICES small ``.npz`` slices into a
temporary folder (opening cost depends on the number of files, not their size), then times
``open_dataset`` and one ``load()``.

    python scripts/measure_open_dataset.py [--cases 18] [--slices 123] [--size 128]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cctr.seg.data.readers import open_dataset


def write_fake_synapse(root: Path, cases: int, slices: int, size: int) -> None:
    train = root / "train_npz"
    train.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.random((size, size), dtype=np.float32)
    label = (image > 0.9).astype(np.float32)
    for case in tqdm(range(cases), desc="writing fake slices", disable=None):
        for z in range(slices):
            np.savez(train / f"case{case:04d}_slice{z:03d}.npz", image=image, label=label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=18)
    parser.add_argument("--slices", type=int, default=123, help="per case; 18 x 123 ~ the 2211 slices of the release")
    parser.add_argument("--size", type=int, default=128, help="slice side in pixels (the release has 512)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_synapse(root, args.cases, args.slices, args.size)
        start = time.perf_counter()
        ds = open_dataset(root)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        case = ds.refs[0].load()
        loaded = time.perf_counter() - start
    print(f"open_dataset: {len(ds)} cases from {args.cases * args.slices} slice files in {opened * 1000:.1f} ms")
    print(f"load one case: {case.shape} (Z, Y, X) stacked from {args.slices} slices in {loaded * 1000:.1f} ms")


if __name__ == "__main__":
    main()
