"""A PNG montage of any dataset: a few cases as rows, a few slices each as columns, the image in
grey with its label map overlaid (translucent fill and solid outline per class), so a person
can check at a glance that images look right and labels sit on them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cctr.seg.atomic import atomic_path
from cctr.seg.data.case import Case, CaseError, CaseRef  # noqa: E402
from cctr.seg.data.dataset import Dataset  # noqa: E402
from cctr.seg.overlay import class_colors, grey_window, overlay  # noqa: E402

TILE_INCHES = 2.2


def pick_cases(dataset: Dataset, count: int) -> tuple[CaseRef, ...]:
    """``count`` cases spread evenly over the dataset, labeled ones first when there are enough."""
    if count < 1:
        raise ValueError(f"montage: need at least one case, got {count}")
    labeled = [r for r in dataset.refs if r.has_label]
    pool = labeled if len(labeled) >= count else list(dataset.refs)
    if not pool:
        raise CaseError(f"{dataset.root}: dataset has no cases to show")
    idx = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return tuple(pool[i] for i in idx)


def pick_slices(case: Case, count: int) -> np.ndarray:
    """Slice indices spread evenly over the slices holding foreground (all slices if none)."""
    if case.label is not None and case.label.any():
        zs = np.flatnonzero(case.label.reshape(case.shape[0], -1).any(axis=1))
        lo, hi = int(zs[0]), int(zs[-1])
    else:
        lo, hi = 0, case.shape[0] - 1
    return np.unique(np.linspace(lo, hi, min(count, hi - lo + 1)).round().astype(int))


def write_montage(
    dataset: Dataset,
    out_png: Path,
    cases: int = 4,
    slices: int = 6,
    case_ids: Optional[Sequence[str]] = None,
) -> Path:
    """Write a montage of ``cases`` cases (or exactly ``case_ids``) by ``slices`` slices to
    ``out_png``, atomically. Slices keep their physical aspect ratio (spacing y / x)."""
    if slices < 1:
        raise ValueError(f"montage: need at least one slice per case, got {slices}")
    refs = tuple(dataset.ref(c) for c in case_ids) if case_ids else pick_cases(dataset, cases)
    colors = class_colors(len(dataset.class_names))
    fig, axes = plt.subplots(
        len(refs), slices, figsize=(TILE_INCHES * slices, TILE_INCHES * len(refs) + 0.4),
        squeeze=False, facecolor="black",
    )
    for row, ref in zip(axes, refs):
        case = ref.load()
        window = grey_window(case.image)
        zs = pick_slices(case, slices)
        for ax in row:
            ax.set_axis_off()
        for ax, z in zip(row, zs):
            label = None if case.label is None else case.label[z]
            ax.imshow(overlay(case.image[z], label, colors, window), aspect=case.spacing[1] / case.spacing[2],
                      interpolation="nearest")
            ax.set_title(f"{case.case_id}  z={z}/{case.shape[0] - 1}", color="white", fontsize=8)
    fig.suptitle(f"{dataset.root.name} ({dataset.layout})", color="white", fontsize=10, y=0.995)
    for i, name in enumerate(dataset.class_names[1:], start=1):
        fig.text((i - 0.5) / max(1, len(dataset.class_names) - 1), 0.003, name, color=colors[i],
                 ha="center", va="bottom", fontsize=9, fontweight="bold")
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, facecolor="black", dpi=100)
    finally:
        plt.close(fig)
    return out_png
