"""What a folder of predicted label maps says about where its maps came from: the small
``predictions.json`` that ``cctr predict`` and the pipeline stages write beside the NIfTI
files, read back by ``cctr eval`` to name the classes without ``--classes``.

The file holds the checkpoint's path (absolute, when it was written), its class names in
label order (background first), the student that predicted, the checkpoint's step, the
label maps cctr wrote into the folder (the only files a later prediction may replace without
``--overwrite``) and, where ``cctr predict`` estimated them, each map's quality control (case
name -> estimated Dice, its parts and the flag; :mod:`joint.qc` reads and writes the entries,
this module keeps them as plain data)::

    {"checkpoint": "/runs/cctr/best.pt", "class_names": ["background", "RV", "MYO", "LV"],
     "student": "a", "step": 2000, "files": ["patient001_ED.nii.gz", ...],
     "qc": {"patient001_ED": {"estimated_dice": 0.91, "students_dice": 0.93, "atlas_fit": 0.89, "flag": false}}}

It is rewritten whole (atomically) each time predictions are written into the folder, so it
describes the latest writer; a folder written by hand simply has none.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from cctr.seg.atomic import write_json
from cctr.seg.data.case import CaseError

PREDICTION_INFO = "predictions.json"


@dataclass(frozen=True)
class PredictionInfo:
    checkpoint: str
    class_names: tuple[str, ...]
    student: str
    step: int
    files: tuple[str, ...] = ()   # label maps cctr wrote here (older files: none listed)
    qc: Mapping[str, Any] = field(default_factory=dict)   # case name -> quality control entry (joint.qc)


def write_prediction_info(folder: Path, checkpoint: Path, class_names: Sequence[str], student: str,
                          step: int, files: Sequence[str] = (), qc: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``folder/predictions.json`` for label maps predicted by ``checkpoint``; ``files``
    names the label maps (file names in ``folder``) written there, ``qc`` their quality control
    entries (none: no ``qc`` key)."""
    return write_json(Path(folder) / PREDICTION_INFO, {
        "checkpoint": str(Path(checkpoint).resolve()),
        "class_names": [str(n) for n in class_names],
        "student": student,
        "step": int(step),
        "files": sorted(dict.fromkeys(str(f) for f in files)),
        **({"qc": dict(qc)} if qc else {}),
    })


def read_prediction_info(folder: Path) -> Optional[PredictionInfo]:
    """The ``predictions.json`` of ``folder``; ``None`` when there is none, :class:`CaseError`
    naming the file when it is not one."""
    path = Path(folder) / PREDICTION_INFO
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        names = data["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
            raise ValueError(f"class_names must list at least two names, got {names!r}")
        files = data.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError(f"files must list file names, got {files!r}")
        qc = data.get("qc", {})
        if not isinstance(qc, dict):
            raise ValueError(f"qc must map case names to entries, got {type(qc).__name__}")
        return PredictionInfo(str(data.get("checkpoint", "")), tuple(names), str(data.get("student", "")),
                              int(data.get("step", 0)), tuple(files), qc)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{path}: not a predictions.json ({type(exc).__name__}: {exc}); delete it or fix it") from exc
