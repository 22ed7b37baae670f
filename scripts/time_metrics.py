"""Time :func:`seg.metrics.score_case` on (16, 192, 192) cardiac-like cases with 3 foreground
classes (target: well under a second per case), next to medpy (the field's reference) and
MONAI's HD95 for one class, and check that the values agree with medpy.

    python scripts/time_metrics.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
from scipy import ndimage

from cctr.seg.metrics import score_case

SHAPE = (16, 192, 192)
SPACING = (10.0, 1.5, 1.5)
NUM_CLASSES = 4


def cardiac_like(shift_zyx: tuple[int, int, int]) -> np.ndarray:
    """(Z, Y, X) labels: LV disc, myocardial ring, RV crescent, over 12 of 16 slices."""
    _, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    r = np.hypot(yy - 96 - shift_zyx[1], xx - 96 - shift_zyx[2])
    r_rv = np.hypot(yy - 96 - shift_zyx[1], xx - 130 - shift_zyx[2])
    out = np.zeros(SHAPE, np.uint8)
    out[(r_rv < 32) & (r >= 38)] = 1
    out[r < 38] = 2
    out[r < 28] = 3
    z0 = 2 + shift_zyx[0]
    out[:z0] = 0
    out[z0 + 12:] = 0
    return out


def blobs(seed: int) -> np.ndarray:
    """(Z, Y, X) smooth random labels filling the whole volume: the slow case for distances."""
    noise = np.random.default_rng(seed).random((NUM_CLASSES,) + SHAPE)
    return np.argmax(ndimage.gaussian_filter(noise, (0, 1, 6, 6)), axis=0).astype(np.uint8)


def seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def medpy_scores(pred: np.ndarray, ref: np.ndarray) -> list[tuple[float, float, float]]:
    from medpy.metric import binary

    return [
        (binary.dc(pred == c, ref == c), binary.hd95(pred == c, ref == c, voxelspacing=SPACING),
         binary.asd(pred == c, ref == c, voxelspacing=SPACING))
        for c in range(1, NUM_CLASSES)
    ]


def monai_hd95_one_class(pred: np.ndarray, ref: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(pred == 1)[None, None]
    t = torch.from_numpy(ref == 1)[None, None]
    return float(compute_hausdorff_distance(p, t, percentile=95, spacing=SPACING))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "cardiac-like": (cardiac_like((0, 0, 0)), cardiac_like((1, 3, -4))),
        "blobs": (blobs(0), blobs(1)),
    }
    for name, (pred, ref) in cases.items():
        ours = score_case(pred, ref, SPACING, NUM_CLASSES)
        reference = medpy_scores(pred, ref)
        worst = max(
            max(abs(s.dice - d), abs(s.hd95 - h) / max(h, 1e-12), abs(s.asd - a) / max(a, 1e-12))
            for s, (d, h, a) in zip(ours.values(), reference)
        )
        t_ours = seconds(lambda: score_case(pred, ref, SPACING, NUM_CLASSES), args.repeats)
        t_medpy = seconds(lambda: medpy_scores(pred, ref), 1)
        t_monai = seconds(lambda: monai_hd95_one_class(pred, ref), 1)
        print(
            f"{name:13s} {SHAPE} {NUM_CLASSES - 1} classes: score_case {t_ours:.3f} s/case, "
            f"medpy {t_medpy:.3f} s/case, MONAI HD95 {t_monai:.3f} s/class; "
            f"max diff to medpy {worst:.1e}"
        )


if __name__ == "__main__":
    main()
