"""Quality control at inference (``cctr predict``): the evidence of each new scan, from the
checkpoint's two students and, where a registration is given, the checkpoint's labeled scans
warped onto it (:mod:`joint.scan_evidence`), turned into an estimated Dice and a flag by
:mod:`joint.qc`.

The atlases are the labeled set the checkpoint trained with (its config's ``labeled``) in the
dataset the user names (``--qc-data``); the registration is ``--reg-backend``, else the
checkpoint's own. Each new scan gets its own oracle with no disk cache: nothing about one scan
is kept after it is scored, so memory does not grow with the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.plan import frontend, plan_for
from cctr.joint.qc import QCConfig, ScanQC, assess, qc_from_json, qc_to_json
from cctr.joint.scan_evidence import ScanEvidence, gather_evidence, scan_evidence
from cctr.reg.backends import Backend, load_backend
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split
from cctr.seg.inference import TrainedStudents, read_checkpoint_dict
from cctr.seg.metrics import mean_foreground_dice


@dataclass(frozen=True)
class Atlases:
    """The labeled scans and the registration that carries their labels onto new scans."""

    cases: tuple[Case, ...]
    backend: Backend
    spec: str


def checkpoint_run_options(checkpoint: Path) -> tuple[str, str]:
    """``(labeled set, registration backend spec)`` a checkpoint trained with ('' for none)."""
    cfg = read_checkpoint_dict(checkpoint)["config"]
    oracle = cfg.get("oracle") if isinstance(cfg.get("oracle"), dict) else {}
    return str(cfg.get("labeled", "1")), str(oracle.get("backend", "") or "")


def load_atlases(checkpoint: Path, data: Path, split_file: Optional[Path], spec: Optional[str]) -> Atlases:
    """The checkpoint's labeled set in ``data`` (its split: ``split_file`` or the folder's own)
    and the backend ``spec`` (else the checkpoint's; ValueError when neither names one)."""
    labeled, own = checkpoint_run_options(checkpoint)
    chosen = spec or own
    if not chosen:
        raise ValueError(f"{checkpoint}: trained without a registration; give --reg-backend SPEC for the atlas fit")
    dataset = open_dataset(data)
    split = load_split(split_file) if split_file is not None else dataset.default_split
    if split is None:
        raise CaseError(f"{data}: the folder has no split.json; pass --qc-split FILE")
    cases = tuple(ref.load() for ref in dataset.of_patients(split.labeled(labeled)))
    if any(c.label is None for c in cases):
        raise CaseError(f"{data}: labeled set {labeled!r} has scans without a label")
    plan = plan_for(dataset, split, labeled)
    return Atlases(cases, load_backend(chosen, frontend(plan)), chosen)


def new_scan(name: str, path: Path, image: np.ndarray, spacing: Sequence[float], affine: np.ndarray,
             class_names: Sequence[str]) -> Case:
    """A scan ``cctr predict`` reads, as the case model the oracle registers."""
    return Case(name, name, image.astype(np.float32), None, tuple(float(s) for s in spacing), affine, (path,),
                tuple(class_names))


def evidence_for(case: Case, labels: Mapping[str, np.ndarray], student: str, num_classes: int,
                 atlases: Optional[Atlases]) -> ScanEvidence:
    """The evidence about the label map of ``student`` (it plays student A: the one written)."""
    ordered = {"a": labels[student], **({"b": labels[o] for o in labels if o != student})}
    oracle = None
    if atlases is not None:
        oracle = RegistrationOracle(atlases.cases, [case], atlases.backend,
                                    OracleConfig(backend=atlases.spec, policy="fused", cache=""))
    return scan_evidence(case, ordered, num_classes, oracle)


def constant_scan(name: str) -> ScanEvidence:
    """A constant image has nothing to segment: estimate 0, so it is always flagged."""
    return ScanEvidence(name, name, 0.0, None, None, {})


def scored_qc(trained: TrainedStudents, cases: Sequence[Case], atlases: Sequence[Case], backend: Backend,
              oracle_cfg: OracleConfig, cfg: QCConfig = QCConfig(), progress: bool = True
              ) -> tuple[dict[str, ScanQC], dict[str, float]]:
    """The quality control of student A on labeled ``cases`` (test scans of a benchmark or the
    demo), and each scan's true Dice to check it with. The estimate never sees the labels: the
    evidence is gathered on the cases without them."""
    oracle = RegistrationOracle(atlases, [c.with_label(None) for c in cases], backend,
                                replace(oracle_cfg, policy="fused"))
    labels_of = {c.case_id: c.label for c in cases}
    truth: dict[str, float] = {}

    def visit(case: Case, labels: Mapping[str, np.ndarray]) -> None:
        truth[case.case_id] = mean_foreground_dice(labels["a"], labels_of[case.case_id], len(trained.class_names))

    evidence = gather_evidence([c.with_label(None) for c in cases], trained, oracle, progress=progress, visit=visit)
    return assess(evidence, cfg), truth


def merged_qc(earlier: Mapping[str, object], kept: Sequence[str], new: Mapping[str, ScanQC], where: str) -> dict:
    """The ``qc`` entry of ``predictions.json``: this batch's, plus the earlier entries of
    label maps still in the folder (``kept`` case names) that this batch did not replace."""
    old = qc_from_json(earlier, where) if earlier else {}
    out = {c: q for c, q in old.items() if c in kept and c not in new}
    return qc_to_json({**out, **new})
