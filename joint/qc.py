"""Quality control of predictions: an estimated Dice per scan, the flag of scans to check, and
how well the estimate ranks the true Dice where references exist.

The estimate is deliberately simple, so a user can say why a scan was flagged:

- ``students_dice``: Dice (mean over foreground classes, 3D) between student A's prediction
  (the one written) and student B's. Two different networks that agree have usually both
  learned what the scan shows;
- ``atlas_fit``: where a registration is given, the Dice between student A's prediction and
  the best-fitting labeled scan's label warped onto the scan (:mod:`joint.scan_evidence`);
- ``estimated_dice``: the mean of those available (chosen on validation scans, docs/USAGE.md,
  "Which scan to label next, and which prediction to check").

The flag (:class:`QCConfig`): a scan whose estimate is below ``threshold``, or among the lowest
``fraction`` of the batch (at least one scan), is flagged for a look. The first rule catches a
batch that is bad throughout, the second names the worst of a good batch.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from cctr.joint.scan_evidence import ScanEvidence
from cctr.seg.atomic import write_text_atomic
from cctr.seg.data.case import CaseError
from cctr.seg.options import option

QC_FILE = "qc.csv"
QC_COLUMNS = ("case", "estimated_dice", "students_dice", "atlas_fit", "flag")


@dataclass(frozen=True)
class QCConfig:
    """When a scan is flagged for a look."""

    threshold: float = option(0.7, "flag every scan whose estimated Dice is below this")
    fraction: float = option(0.1, "flag the lowest estimates of the batch, this share of it (at least one scan)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"QC threshold and fraction must lie in [0, 1], got {self.threshold} and {self.fraction}")


@dataclass(frozen=True)
class ScanQC:
    """One scan's quality control (module docstring)."""

    case: str
    estimated_dice: float
    students_dice: Optional[float]
    atlas_fit: Optional[float]
    flag: bool = False


def estimated_dice(students_dice: Optional[float], atlas_fit: Optional[float]) -> Optional[float]:
    """The mean of the available signals; None when there is none (one student, no registration)."""
    found = [v for v in (students_dice, atlas_fit) if v is not None]
    return float(np.mean(found)) if found else None


def lowest(values: Mapping[str, float], fraction: float) -> set[str]:
    """The keys of the ``ceil(fraction * n)`` lowest values (ties broken by key, so the
    choice is reproducible); none for fraction 0."""
    count = math.ceil(fraction * len(values) - 1e-9) if fraction > 0 else 0
    return set(sorted(values, key=lambda k: (values[k], k))[:count])


def assess(evidence: Mapping[str, ScanEvidence], cfg: QCConfig = QCConfig()) -> dict[str, ScanQC]:
    """The QC of every scan of a batch whose evidence gives an estimate; empty when none does
    (a one-student checkpoint without a registration)."""
    estimates = {c: estimated_dice(e.students_dice, e.atlas_fit_a) for c, e in evidence.items()}
    known = {c: v for c, v in estimates.items() if v is not None}
    flagged = lowest(known, cfg.fraction) | {c for c, v in known.items() if v < cfg.threshold}
    return {c: ScanQC(c, v, evidence[c].students_dice, evidence[c].atlas_fit_a, c in flagged) for c, v in known.items()}


def _cell(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6f}"


def qc_csv(qc: Mapping[str, ScanQC]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(QC_COLUMNS)
    for q in sorted(qc.values(), key=lambda q: (q.estimated_dice, q.case)):
        writer.writerow([q.case, _cell(q.estimated_dice), _cell(q.students_dice), _cell(q.atlas_fit), int(q.flag)])
    return buf.getvalue()


def write_qc_csv(path: Path, qc: Mapping[str, ScanQC]) -> Path:
    """``qc.csv``: one row per scan, lowest estimate first."""
    return write_text_atomic(Path(path), qc_csv(qc))


def read_qc_csv(path: Path) -> dict[str, ScanQC]:
    """The scans of a ``qc.csv`` :func:`write_qc_csv` wrote; CaseError naming it when it is not one."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        def opt(v: str) -> Optional[float]:
            return float(v) if v else None
        return {r["case"]: ScanQC(r["case"], float(r["estimated_dice"]), opt(r["students_dice"]), opt(r["atlas_fit"]),
                                  r["flag"] == "1") for r in rows}
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{path}: not a qc.csv of cctr ({type(exc).__name__}: {exc}); delete it to redo it") from exc


def qc_to_json(qc: Mapping[str, ScanQC]) -> dict:
    return {c: {"estimated_dice": q.estimated_dice, "students_dice": q.students_dice, "atlas_fit": q.atlas_fit,
                "flag": q.flag} for c, q in sorted(qc.items())}


def qc_from_json(data: object, where: str) -> dict[str, ScanQC]:
    """The ``qc`` entry of a ``predictions.json``; CaseError naming ``where`` when malformed."""
    if not isinstance(data, Mapping):
        raise CaseError(f"{where}: 'qc' must map case names to their estimates")
    out = {}
    for case, entry in data.items():
        try:
            opt = {k: None if entry.get(k) is None else float(entry[k]) for k in ("students_dice", "atlas_fit")}
            out[str(case)] = ScanQC(str(case), float(entry["estimated_dice"]), opt["students_dice"],
                                    opt["atlas_fit"], bool(entry.get("flag", False)))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CaseError(f"{where}: qc entry of {case!r} is malformed ({type(exc).__name__}: {exc})") from exc
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 values or a
    constant side."""
    from scipy.stats import rankdata

    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} and {len(y)} values")
    if len(x) < 3:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class QCCheck:
    """How the estimate did against the true per-scan Dice of ``scans`` scans.

    ``spearman``: rank correlation of estimate and true Dice. ``worst``: how many scans are the
    worst ``fraction`` by true Dice; ``flagged``: scans the flag named; ``flag_precision``: the
    share of flagged scans among the worst (NaN when none is flagged); ``flag_recall``: the
    share of the worst that are flagged; ``lowest_precision``: the share of the ``worst``
    lowest estimates that are among the worst (the bottom-decile rule alone)."""

    scans: int
    spearman: float
    worst: int
    flagged: int
    flag_precision: float
    flag_recall: float
    lowest_precision: float


def check_qc(qc: Mapping[str, ScanQC], true_dice: Mapping[str, float], fraction: float = 0.1) -> QCCheck:
    """:class:`QCCheck` over the scans both name; ValueError when they share none."""
    cases = sorted(set(qc) & set(true_dice))
    if not cases:
        raise ValueError("quality control: no scan has both an estimate and a true Dice")
    worst = lowest({c: true_dice[c] for c in cases}, fraction)
    flagged = {c for c in cases if qc[c].flag}
    guessed = lowest({c: qc[c].estimated_dice for c in cases}, fraction)
    return QCCheck(
        scans=len(cases),
        spearman=spearman([qc[c].estimated_dice for c in cases], [true_dice[c] for c in cases]),
        worst=len(worst), flagged=len(flagged),
        flag_precision=len(flagged & worst) / len(flagged) if flagged else float("nan"),
        flag_recall=len(flagged & worst) / len(worst) if worst else float("nan"),
        lowest_precision=len(guessed & worst) / len(worst) if worst else float("nan"),
    )


def check_markdown(check: QCCheck, fraction: float = 0.1) -> str:
    """The check as a few lines of markdown."""
    return "\n".join([
        "## Quality control: the estimated Dice against the true Dice",
        "",
        "| scans | Spearman | worst scans | flagged | flag precision | flag recall | lowest-estimate precision |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {check.scans} | {check.spearman:.3f} | {check.worst} | {check.flagged} | {check.flag_precision:.3f} | "
        f"{check.flag_recall:.3f} | {check.lowest_precision:.3f} |",
        "",
        (f"Worst scans: the lowest {100 * fraction:g} % by true Dice. Flag precision: the share of flagged scans "
         "among them; lowest-estimate precision: the same for the as many scans with the lowest estimates."),
        "",
    ])
