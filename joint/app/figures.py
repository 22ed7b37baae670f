"""Every figure the application draws, as PNG files written atomically: test-slice overlays
(image / truth / prediction / warped atlas label), training curves read back from TensorBoard
logs, and the benchmark's Dice bars. Overlays come from :mod:`seg.overlay`, so a class has one
colour in every figure."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cctr.seg.atomic import atomic_path
from cctr.seg.data.case import Case
from cctr.seg.metrics import ClassScore
from cctr.seg.overlay import class_colors, overlay


def overlay_slices(cases: Sequence[Case], rows: int) -> list[tuple[int, int]]:
    """``rows`` (case index, slice) picks: cases in turn, each pass taking the slice with the
    next-largest labeled area of that case, so the heart is in view."""
    picks: list[tuple[int, int]] = []
    ranked = [np.argsort(-(c.label > 0).sum(axis=(1, 2)), kind="stable") if c.label is not None else np.arange(c.shape[0])
              for c in cases]
    for row in range(rows):
        i = row % len(cases)
        order = ranked[i]
        picks.append((i, int(order[(row // len(cases)) % len(order)])))
    return picks


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def plot_overlays(path: Path, cases: Sequence[Case], predictions: Mapping[str, np.ndarray],
                  warped: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[int, ClassScore]],
                  rows: int, prediction_title: str = "prediction") -> Path:
    """A grid of test slices, one per row: image | truth | prediction | warped atlas label."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    picks = overlay_slices(cases, rows)
    colors = class_colors(cases[0].num_classes)
    fig = Figure(figsize=(10, 2.8 * len(picks) + 0.6))
    axes = fig.subplots(len(picks), 4, squeeze=False)
    for r, (i, z) in enumerate(picks):
        case = cases[i]
        aspect = case.spacing[1] / case.spacing[2]
        dice = np.mean([s.dice for s in scores[case.case_id].values()])
        panels = [(None, f"{case.case_id} z={z}"), (case.label, "truth"),
                  (predictions[case.case_id], f"{prediction_title} (Dice {dice:.3f})"),
                  (warped[case.case_id], "warped atlas label")]
        for ax, (label, title) in zip(axes[r], panels):
            ax.imshow(overlay(case.image[z], None if label is None else label[z], colors), aspect=aspect,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    names = cases[0].class_names[1:]
    fig.legend(handles=[Patch(color=colors[k], label=n) for k, n in enumerate(names, start=1)],
               loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (2.8 * len(picks) + 0.6), 1, 1))
    return save_figure(fig, path)


def plot_scan_rows(path: Path, rows: Sequence[tuple[str, Case, Mapping[str, np.ndarray]]]) -> Path:
    """One row per scan (title, case, named label maps): the image, then each label map over it,
    at the slice where the first label map covers the most foreground (the scan's middle slice
    when it covers none). ``cctr suggest`` shows its candidates with both students' predictions."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not rows:
        raise ValueError(f"{path}: no scan to draw")
    width = 1 + max(len(labels) for _, _, labels in rows)
    colors = class_colors(rows[0][1].num_classes)
    fig = Figure(figsize=(2.6 * width, 2.8 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), width, squeeze=False)
    for ax_row, (title, case, labels) in zip(axes, rows):
        first = next(iter(labels.values()), None)
        area = (first > 0).sum(axis=(1, 2)) if first is not None else np.zeros(case.shape[0])
        z = int(np.argmax(area)) if area.any() else case.shape[0] // 2
        panels = [(None, f"{title} z={z}"), *((label, name) for name, label in labels.items())]
        for ax in ax_row:
            ax.axis("off")
        for ax, (label, name) in zip(ax_row, panels):
            ax.imshow(overlay(case.image[z], None if label is None else label[z], colors),
                      aspect=case.spacing[1] / case.spacing[2], interpolation="nearest")
            ax.set_title(name, fontsize=8)
    names = rows[0][1].class_names[1:]
    fig.legend(handles=[Patch(color=colors[k], label=n) for k, n in enumerate(names, start=1)],
               loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (2.8 * len(rows) + 0.6), 1, 1))
    return save_figure(fig, path)


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series of a TensorBoard log folder: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=np.float64))
    return out


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


REGISTRATION_SERIES = "registration (atlas labels)"
# the validation gate logs the Dice of the atlas labels warped onto the validation volumes; a coupled run's
# net moves it, a frozen net leaves it flat (docs/METHOD.md, parts 6 and 9)
REGISTRATION_TAG = "val_gate/registration_dice"


def validation_series(seg: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The validation Dice curves of a segmentation log, by legend label: each student's
    (``val_<student>/dice``), and the registration's where the run logged it, so the figure
    shows when the students overtake the registration they learn from."""
    series = {f"student {tag[4:-5]}": seg[tag]
              for tag in sorted(t for t in seg if t.startswith("val_") and t.endswith("/dice"))}
    if REGISTRATION_TAG in seg:
        series[REGISTRATION_SERIES] = seg[REGISTRATION_TAG]
    return series


def plot_curves(path: Path, reg_log: Optional[Path], seg_log: Path, student: str = "a") -> Path:
    """Training curves from the TensorBoard logs: registration loss and validation Dice (an empty
    panel without ``reg_log``); segmentation losses of ``student`` (and the joint contrastive one);
    validation Dice of the students and of the registration (:func:`validation_series`)."""
    from matplotlib.figure import Figure

    reg = read_scalars(reg_log) if reg_log is not None else {}
    seg = read_scalars(seg_log)
    fig = Figure(figsize=(15, 4))
    ax_reg, ax_loss, ax_val = fig.subplots(1, 3)
    if "loss/total" in reg:
        steps, values = reg["loss/total"]
        ax_reg.plot(steps, values, color="tab:blue", alpha=0.3)
        ax_reg.plot(steps, smooth(values, max(1, len(values) // 10)), color="tab:blue")
    ax_reg.set_title("registration pretraining")
    ax_reg.set_xlabel("step")
    ax_reg.set_ylabel("similarity + smoothness loss")
    if "val/dice" in reg:
        twin = ax_reg.twinx()
        twin.plot(*reg["val/dice"], "o-", color="tab:red", label="val Dice")
        twin.set_ylabel("validation Dice of warped labels", color="tab:red")
    for tag in sorted(t for t in seg if t.startswith((f"loss/{student}/", "loss/joint/")) or t == "loss/total"):
        steps, values = seg[tag]
        ax_loss.plot(steps, smooth(values, max(1, len(values) // 40)), label=tag[len("loss/"):])
    ax_loss.set_title(f"segmentation losses (student {student}, smoothed)")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    for label, (steps, values) in validation_series(seg).items():
        ax_val.plot(steps, values, "o--" if label == REGISTRATION_SERIES else "o-", label=label)
    ax_val.set_title("validation 3D Dice (mean over classes)")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylim(0, 1)
    if ax_val.has_data():
        ax_val.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_paired_differences(path: Path, panels: Mapping[str, Mapping[str, tuple[float, float, float, Sequence[float]]]]
                            ) -> Path:
    """One panel per title (``panels``: title -> row label -> (mean difference, interval low,
    interval high, each run's difference)): a bar at the mean, the 95 % interval as a whisker,
    each (draw, seed) run's mean difference as a dot, and the zero line. Empty panels: a note."""
    from matplotlib.figure import Figure

    titles = list(panels) or ["no comparison: the control has no runs"]
    rows = list(dict.fromkeys(r for panel in panels.values() for r in panel))
    fig = Figure(figsize=(max(6.0, 1.3 * max(len(rows), 1)) * min(len(titles), 2), 4.5 * -(-len(titles) // 2)))
    axes = np.atleast_1d(fig.subplots(-(-len(titles) // 2), min(len(titles), 2), squeeze=False).ravel())
    for ax, title in zip(axes, titles):
        panel = panels.get(title, {})
        for x, row in enumerate(rows):
            if row not in panel:
                continue
            mean, low, high, units = panel[row]
            color = "C2" if low > 0 else "C3" if high < 0 else "C7"
            ax.bar(x, mean, color=color, alpha=0.6)
            ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="k", capsize=4)
            ax.plot(np.full(len(units), x), units, "k.", markersize=5)
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(rows)), rows, fontsize=8)
        ax.set_ylabel("paired difference of 3D Dice")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)
