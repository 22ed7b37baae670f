"""The pipeline stages that ``cctr demo``, ``cctr benchmark`` and the scripts share, each one
idempotent so a re-run skips what is done and an interrupted stage resumes:

- :func:`pretrain_registration`: the learned registration net on a split's training volumes;
- :func:`train_segmentation`: one segmentation run of any trainer method;
- :func:`predict_cases`: NIfTI predictions with the input's affine and header;
- :func:`score_cases`: 3D scores of predictions against the cases' labels;
- :func:`registration_baseline`: the registration-only atlas baseline on the test volumes;
- :func:`guidance_dice`: how good the registration guidance of a run was (pair Dice against
  labels that training never reads).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cctr.joint.config import JointConfig, with_backend
from cctr.joint.methods import PropagationResult, pair_dice, registration_only, run_backend, train_joint
from cctr.joint.oracle import RegistrationOracle
from cctr.reg.checkpoint import read_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.placement import FrontEnd
from cctr.reg.train import Volume
from cctr.reg.train import train as train_registration
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.nifti import read_nifti, write_nifti
from cctr.seg.data.split import Split
from cctr.seg.inference import load_students
from cctr.seg.metrics import ClassScore, score_case
from cctr.seg.progress import Progress
from cctr.seg.runlock import run_lock
from cctr.seg.prediction_info import write_prediction_info

# what the learned registration is compared against when nothing else is asked for
REFERENCE_BACKEND = "identity"


def registration_volumes(dataset: Dataset, patients: Sequence[str], with_labels: bool) -> list[Volume]:
    out = []
    for ref in dataset.of_patients(patients):
        case = ref.load()
        out.append(Volume(case.case_id, case.patient_id, case.image, case.spacing, case.label if with_labels else None))
    return out


def registration_done(cfg: RegConfig, out_dir: Path) -> bool:
    last = Path(out_dir) / "last.pt"
    return last.is_file() and int(read_checkpoint(last)["step"]) >= cfg.train.steps


def run_registration_training(cfg: RegConfig, train_volumes: Sequence[Volume], val_volumes: Sequence[Volume],
                              num_classes: int, out_dir: Path, *, resume: bool, max_bad_steps: int = 0,
                              progress: bool = True) -> Path:
    """:func:`reg.train.train` as the application runs it: the run folder locked against a
    second writer, progress as a bar on a terminal and as plain lines in a log."""
    def reporter(total: int, initial: int) -> Progress:
        return Progress(total, "reg train", initial=initial, enabled=progress)

    with run_lock(Path(out_dir)):
        return train_registration(cfg, train_volumes, val_volumes, num_classes, Path(out_dir), resume=resume,
                                  max_bad_steps=max_bad_steps, progress=reporter)


def pretrain_registration(dataset: Dataset, split: Split, cfg: RegConfig, out_dir: Path, labeled: str) -> Path:
    """Train the registration net on ``split``'s training volumes (labels only of the ``labeled``
    set and only when ``cfg.loss.dice_weight > 0``), validating on its validation volumes.

    A finished run in ``out_dir`` is reused, an interrupted one resumed. Returns the checkpoint
    the learned backend should load (``best.pt``, else ``last.pt``)."""
    out_dir = Path(out_dir)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if not registration_done(cfg, out_dir):
        chosen = set(split.labeled(labeled)) if cfg.loss.dice_weight > 0 else set()
        train_vols = [v for p in split.train for v in registration_volumes(dataset, [p], p in chosen)]
        val_vols = registration_volumes(dataset, split.val, with_labels=True)
        run_registration_training(cfg, train_vols, val_vols, len(dataset.class_names), out_dir, resume=last.is_file())
    return best if best.is_file() else last


def segmentation_done(cfg: JointConfig) -> bool:
    last = Path(cfg.out_dir) / "last.pt"
    return last.is_file() and int(torch.load(last, map_location="cpu", weights_only=True)["step"]) >= cfg.iterations


def train_segmentation(cfg: JointConfig, dataset: Dataset, split: Split, frontend: Optional[FrontEnd] = None,
                       progress: bool = True) -> Path:
    """Train ``cfg`` unless its run folder already holds the finished run (an interrupted one
    resumes); classical backends on ``frontend``. Returns the checkpoint to predict with
    (``best.pt``, else ``last.pt``)."""
    out_dir = Path(cfg.out_dir)
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    if not segmentation_done(cfg):
        train_joint(cfg, dataset, split, frontend=frontend, resume=last.is_file(), progress=progress)
    return best if best.is_file() else last


def predict_cases(checkpoint: Path, cases: Sequence[Case], out_dir: Optional[Path], student: str = "a",
                  progress: bool = True) -> dict[str, np.ndarray]:
    """uint8 ``(Z, Y, X)`` prediction of each case, written to ``out_dir/<case>.nii.gz`` with
    the case's affine and header (``out_dir`` None: kept in memory only); a file already there
    is read back instead of recomputed. When anything was written, ``out_dir/predictions.json``
    names the checkpoint and its classes (:mod:`seg.prediction_info`), so ``cctr eval`` knows them."""
    trained = None
    out = {}
    for case in tqdm(cases, desc="predict", unit="volume", disable=None if progress else True):
        path = None if out_dir is None else Path(out_dir) / f"{case.case_id}.nii.gz"
        if path is not None and path.is_file():
            out[case.case_id] = read_nifti(path)[0].astype(np.uint8)
            continue
        trained = trained or load_students(checkpoint)
        out[case.case_id] = trained.predict(case.image, student)
        if path is not None:
            write_nifti(path, out[case.case_id], case.affine, case.header)
    if trained is not None and out_dir is not None:
        write_prediction_info(out_dir, checkpoint, trained.class_names, student, trained.step,
                              files=[f"{case.case_id}.nii.gz" for case in cases])
    return out


def score_cases(predictions: Mapping[str, np.ndarray], cases: Sequence[Case]) -> dict[str, dict[int, ClassScore]]:
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        raise CaseError(f"cases without a reference label cannot be scored: {missing}")
    return {c.case_id: score_case(predictions[c.case_id], c.label, c.spacing, c.num_classes) for c in cases}


def guidance_dice(cfg: JointConfig, dataset: Dataset, split: Split, specs: Sequence[str],
                  frontend: Optional[FrontEnd] = None, progress: bool = True) -> dict[str, list[float]]:
    """Per backend, the Dice of every (unlabeled training volume, atlas) pair that the run's atlas
    policy can use: how good the registration guidance of RSL and REPS was. Scored against
    the phantom's labels of those volumes, which training never saw."""
    atlases = [ref.load() for ref in dataset.of_patients(split.labeled(cfg.labeled))]
    targets = [ref.load() for ref in dataset.of_patients(split.unlabeled(cfg.labeled))]
    references = {t.case_id: t.label for t in targets if t.label is not None}
    out = {}
    for spec in tqdm(specs, desc="registration Dice", unit="backend", disable=None if progress else True):
        # identity is instant; caching its Fields on disk would only cost space
        cache = "" if spec == REFERENCE_BACKEND else cfg.oracle.cache
        run_cfg = with_backend(cfg, spec, cache)
        oracle = RegistrationOracle(atlases, [t.with_label(None) for t in targets], run_backend(run_cfg, frontend),
                                    run_cfg.oracle, seed=cfg.seed)
        out[spec] = [round(d, 6) for d in pair_dice(oracle, references).values()]
    return out


def registration_baseline(cfg: JointConfig, dataset: Dataset, split: Split, out_dir: Path,
                          frontend: Optional[FrontEnd] = None, progress: bool = True) -> PropagationResult:
    """The atlas baseline with the same backend, on the test volumes: labels of the labeled set
    propagated by registration alone (Fields come from the disk cache on a re-run)."""
    baseline = replace(cfg, method="registration-only", eval_subset="test", out_dir=str(out_dir))
    return registration_only(baseline, dataset, split, frontend=frontend, progress=progress)


# -- figures ---------------------------------------------------------------------------------------
