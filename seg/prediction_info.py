"""What a folder of predicted label maps says about where its maps came from: the small
``predictions.json`` that ``cctr predict`` and the pipeline stages write beside the NIfTI
files, read back by ``cctr eval`` to name the classes without ``--classes``.

The file holds the checkpoint's path (absolute, when it was written), its class names in
label order (background first), the student that predicted, the checkpoint's step and the
label maps cctr wrote into the folder (the only files a later prediction may replace without
``--overwrite``)::

    {"checkpoint": "/runs/cctr/best.pt", "class_names": ["background", "RV", "MYO", "LV"],
     "student": "a", "step": 2000, "files": ["patient001_ED.nii.gz", ...]}

It is rewritten whole (atomically) each time predictions are written into the folder, so it
describes the latest writer; a folder written by hand simply has none.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

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


def write_prediction_info(folder: Path, checkpoint: Path, class_names: Sequence[str], student: str,
                          step: int, files: Sequence[str] = ()) -> Path:
    """Write ``folder/predictions.json`` for label maps predicted by ``checkpoint``; ``files``
    names the label maps (file names in ``folder``) written there."""
    return write_json(Path(folder) / PREDICTION_INFO, {
        "checkpoint": str(Path(checkpoint).resolve()),
        "class_names": [str(n) for n in class_names],
        "student": student,
        "step": int(step),
        "files": sorted(dict.fromkeys(str(f) for f in files)),
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
        return PredictionInfo(str(data.get("checkpoint", "")), tuple(names), str(data.get("student", "")),
                              int(data.get("step", 0)), tuple(files))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{path}: not a predictions.json ({type(exc).__name__}: {exc}); delete it or fix it") from exc
