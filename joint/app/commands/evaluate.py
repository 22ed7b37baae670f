"""``cctr eval``: score predicted label maps against reference label maps, the way the field
scores (:mod:`seg.metrics`), and write ``scores.csv`` and ``summary.md`` (:mod:`seg.report`).

``--ref`` is either

- a dataset folder in any layout :func:`seg.data.readers.open_dataset` reads (raw ACDC,
  SSL4MIS ``.h5``, TransUNet Synapse, nnU-Net raw with test labels in ``labelsTs/`` too;
  ``--layout`` forces one). References are the dataset's labeled cases, read by the same
  reader training uses, and distances use each case's spacing as the reader gives it, so
  the scores of ``cctr benchmark``'s ``predictions/`` are reproduced exactly; or
- a plain folder of reference label maps (NIfTI files directly in it), scored with the
  spacing of each reference file.

Predictions pair with references by case name: the file name without ``.nii.gz`` / ``.nii``
(``cctr predict`` and ``cctr benchmark`` name them by case id). Class names come from, in
this order: the dataset (for a plain folder, a ``dataset.json`` in it or, for a folder named
``labelsTr`` / ``labelsTs``, in its parent); the prediction folder's ``predictions.json``
(written by ``cctr predict`` and the benchmark, naming the checkpoint and its classes;
:mod:`seg.prediction_info`); ``--classes``. A ``--classes`` that contradicts an earlier source
is an error; a checkpoint whose classes differ from the dataset's gets a warning.

Without ``--split`` / ``--subset`` every prediction is scored and must have a reference. With
``--split FILE`` (or ``--subset`` alone, for the dataset's own split: its ``split.json`` or
the release's lists) exactly the cases of the chosen subset's patients are scored, and each must
have a reference label and a prediction. Every pair must agree in shape and affine.

Where the predictions carry quality control (``cctr predict`` writes an estimated Dice per scan
into ``predictions.json``, :mod:`joint.qc`), the report adds how well the estimate ranks the
true per-scan Dice (Spearman) and how precisely its flag catches the worst 10 % of the scored
scans (``summary.md`` and the printed summary).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cctr.joint.qc import check_markdown, check_qc, qc_from_json
from cctr.seg.data.case import CaseError, label_to_uint8
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.nifti import AFFINE_ATOL_MM, NIFTI_SUFFIXES, read_nifti
from cctr.seg.data.readers import LAYOUTS, READERS, open_dataset
from cctr.seg.data.readers.nnunet import DATASET_JSON, class_names_of, read_dataset_json
from cctr.seg.data.split import Split, load_split
from cctr.seg.metrics import EMPTY_POLICIES, ClassScore, EmptyPolicy, empty_policy, score_case
from cctr.seg.prediction_info import PREDICTION_INFO, PredictionInfo, read_prediction_info
from cctr.seg.progress import Progress
from cctr.seg.atomic import write_text_atomic
from cctr.seg.report import summarize, summary_markdown, write_scores_csv

Spacing = tuple[float, float, float]
# label (Z, Y, X), spacing (z, y, x) in mm for distances, affine of the grid
Labels = tuple[np.ndarray, Spacing, np.ndarray]


@dataclass(frozen=True)
class RefCase:
    """One reference label map: its patient, the file messages name, and how to read it."""

    patient: str
    source: Path
    read: Callable[[], Labels]


@dataclass(frozen=True)
class References:
    """What ``--ref`` holds: labeled cases, the dataset's unlabeled ones, class names, split."""

    where: str  # shown in messages and the summary title
    cases: dict[str, RefCase]  # case id -> labeled reference, in dataset / file order
    unlabeled: dict[str, str]  # case id -> patient id of dataset cases without a label
    class_names: Optional[tuple[str, ...]]  # background first; None when the references name none
    names_from: str  # where class_names came from
    default_split: Optional[Split]  # the dataset's own split, if it has one


def case_name(path: Path) -> Optional[str]:
    """The case name of a NIfTI file (its name without the suffix), ``None`` for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def nifti_files(folder: Path) -> dict[str, Path]:
    """Case name -> NIfTI file for the files directly in ``folder``."""
    if not folder.is_dir():
        raise CaseError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path)
        if name is None or not path.is_file() or path.name.startswith("."):
            continue
        if name in found:
            raise CaseError(f"{folder}: case {name!r} has two files, {found[name].name} and {path.name}")
        found[name] = path
    return found


def _read_label_file(path: Path) -> Labels:
    label, spacing, affine, _ = read_nifti(path)
    return label, spacing, affine


def _read_dataset_case(dataset: Dataset, case_id: str) -> Labels:
    # the reader's own load: the label, spacing and affine the benchmark scored with
    case = dataset.ref(case_id).load()
    if case.label is None:  # only refs the reader marked labeled get here
        raise CaseError(f"{', '.join(map(str, case.sources))}: case {case_id} has no label map")
    return case.label, case.spacing, case.affine


def dataset_references(dataset: Dataset) -> References:
    """The labeled cases of a dataset, read through its reader."""
    cases = {
        r.case_id: RefCase(r.patient_id, r.sources[-1], partial(_read_dataset_case, dataset, r.case_id))
        for r in dataset.refs
        if r.has_label
    }
    unlabeled = {r.case_id: r.patient_id for r in dataset.refs if not r.has_label}
    return References(f"{dataset.root} ({dataset.layout})", cases, unlabeled, tuple(dataset.class_names),
                      f"the {dataset.layout} dataset {dataset.root}", dataset.default_split)


def folder_dataset_json(folder: Path) -> Optional[Path]:
    """The ``dataset.json`` describing a plain folder of label maps: one in it, or for an
    nnU-Net ``labelsTr`` / ``labelsTs`` folder, its dataset's."""
    for candidate in (folder / DATASET_JSON, folder.parent / DATASET_JSON):
        if candidate.is_file() and (candidate.parent == folder or folder.name in ("labelsTr", "labelsTs")):
            return candidate
    return None


def folder_references(folder: Path) -> References:
    """Every NIfTI file in ``folder`` as a reference; class names and patients from its
    ``dataset.json`` when there is one."""
    files = nifti_files(folder)
    names, patient_of, meta_path = None, {}, folder_dataset_json(folder)
    if meta_path is not None:
        meta = read_dataset_json(meta_path)
        names = class_names_of(meta["labels"], meta_path) if "labels" in meta else None
        patient_of = meta.get("patient_of", {})
        if not isinstance(patient_of, dict) or not all(isinstance(v, str) for v in patient_of.values()):
            raise CaseError(f"{meta_path}: 'patient_of' must map case ids to patient id strings")
    cases = {name: RefCase(patient_of.get(name, name), path, partial(_read_label_file, path))
             for name, path in files.items()}
    return References(str(folder), cases, {}, names, str(meta_path or folder), None)


def open_references(ref: Path, layout: Optional[str]) -> References:
    """``--ref`` as a dataset (``layout`` given, or the folder looks like one) or as a plain
    folder of label maps (NIfTI files directly in it, which no dataset layout has)."""
    if not ref.is_dir():
        raise CaseError(f"{ref}: reference folder not found")
    if layout is not None:
        return dataset_references(open_dataset(ref, layout))
    if any(case_name(p) is not None for p in ref.iterdir()):
        return folder_references(ref)
    if not any(looks_like(ref) for looks_like, _ in READERS.values()):
        raise CaseError(f"{ref}: neither a folder of reference label maps (*.nii.gz) nor a dataset in a known "
                        f"layout ({', '.join(LAYOUTS)}); see docs/DATASETS.md")
    return dataset_references(open_dataset(ref))


def choose_class_names(refs: References, info: Optional[PredictionInfo], info_path: Path,
                       classes: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The first of: the references' class names, the prediction folder's checkpoint classes,
    ``--classes``. A ``--classes`` that contradicts the chosen names is an error; checkpoint
    classes that differ from the references' are a warning (scores use the references')."""
    candidates = [
        (refs.class_names, refs.names_from),
        (info.class_names if info else None, str(info_path)),
        (tuple(classes) if classes else None, "--classes"),
    ]
    names, source = next(((n, s) for n, s in candidates if n is not None), (None, ""))
    if names is None:
        raise CaseError(f"{refs.where}: no class names: no dataset.json with 'labels' and no {info_path}; "
                        "name the classes with --classes background ...")
    if classes and tuple(classes) != names:
        raise CaseError(f"--classes {list(classes)}: {source} already names the classes {list(names)}; drop --classes")
    if info is not None and info.class_names != names:
        print(f"cctr: warning: {info_path}: the predicting checkpoint's classes {list(info.class_names)} differ "
              f"from {list(names)} of {source}; scoring with the latter", file=sys.stderr)
    if len(names) < 2:
        raise CaseError(f"{source}: need background and at least one class, got {list(names)}")
    return names


def pick_split(split_file: Optional[str], subset: Optional[str], refs: References,
               ref: Path) -> Optional[tuple[Split, str, str]]:
    """``(split, its name for messages, subset)`` to score, or ``None`` to score every prediction."""
    if split_file is not None:
        return load_split(Path(split_file)), split_file, subset or "test"
    if subset is None:
        return None
    if refs.default_split is None:
        raise CaseError(f"{ref}: --subset {subset} needs --split FILE: the references carry no split of their own "
                        "(split.json or the release's lists)")
    return refs.default_split, f"{ref} (its own split)", subset


def cases_of_subset(split: Split, split_name: str, subset: str, refs: References) -> list[str]:
    """Reference case ids whose patients are in ``subset`` of the split, in reference order;
    a subset case without a label, or a subset patient without any case, is an error."""
    patients = set(getattr(split, subset))
    if not patients:
        raise CaseError(f"{split_name}: the {subset!r} subset names no patients")
    unlabeled = [case for case, patient in refs.unlabeled.items() if patient in patients]
    if unlabeled:
        raise CaseError(f"{split_name}: {subset} cases {unlabeled} have no reference label in {refs.where}")
    chosen = [case for case, r in refs.cases.items() if r.patient in patients]
    absent = sorted(patients - {refs.cases[case].patient for case in chosen})
    if absent:
        raise CaseError(f"{split_name}: {subset} patients {absent} have no reference labels in {refs.where}")
    return chosen


def pair_cases(
    preds: dict[str, Path],
    refs: References,
    pred_dir: Path,
    wanted: Optional[Sequence[str]] = None,
) -> list[tuple[str, Path, RefCase]]:
    """``(case, prediction, reference)`` triples: every prediction, or with ``wanted`` exactly
    those cases; a missing counterpart is an error naming the file that lacks it."""
    if wanted is None:
        if not preds:
            raise CaseError(f"{pred_dir}: no NIfTI predictions (*.nii.gz, *.nii) found")
        unlabeled = [p for name, p in preds.items() if name in refs.unlabeled]
        if unlabeled:
            raise CaseError(f"{unlabeled[0]}: its case has no reference label in {refs.where} "
                            f"({len(unlabeled)} such prediction(s)); use --split to score a labeled subset")
        unmatched = [p for name, p in preds.items() if name not in refs.cases]
        if unmatched:
            raise CaseError(f"{unmatched[0]}: no reference label map with this case name in {refs.where} "
                            f"({len(unmatched)} unmatched)")
        return [(name, preds[name], refs.cases[name]) for name in preds]
    missing = [name for name in wanted if name not in preds]
    if missing:
        raise CaseError(f"{pred_dir}: no prediction for case(s) {missing} (expected e.g. {missing[0]}.nii.gz)")
    return [(name, preds[name], refs.cases[name]) for name in wanted]


def score_pair(pred_path: Path, ref: RefCase, num_classes: int, policy: EmptyPolicy) -> dict[int, ClassScore]:
    """Read one prediction and its reference, check they share a grid, and score them with
    the reference's spacing."""
    pred, _, pred_affine, _ = read_nifti(pred_path)
    label, spacing, ref_affine = ref.read()
    if pred.shape != label.shape:
        raise CaseError(f"{pred_path}: shape {pred.shape} (Z, Y, X) differs from the reference {ref.source} {label.shape}")
    if not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(pred_affine - ref_affine).max())
        raise CaseError(f"{pred_path}: affine differs from the reference {ref.source} by up to {diff:.4g} mm, "
                        "so the label maps are not on one grid")
    return score_case(
        label_to_uint8(pred, str(pred_path), num_classes),
        label_to_uint8(label, str(ref.source), num_classes),
        spacing,
        num_classes,
        policy,
    )


def run(args: argparse.Namespace) -> int:
    pred_dir, ref = Path(args.pred), Path(args.ref)
    if not pred_dir.is_dir():
        raise CaseError(f"{pred_dir}: prediction folder not found")
    refs = open_references(ref, args.layout)
    info = read_prediction_info(pred_dir)
    class_names = choose_class_names(refs, info, pred_dir / PREDICTION_INFO, args.classes)
    chosen = pick_split(args.split, args.subset, refs, ref)
    wanted = cases_of_subset(*chosen, refs) if chosen else None
    pairs = pair_cases(nifti_files(pred_dir), refs, pred_dir, wanted)

    policy = empty_policy(args.empty_policy)
    scores = {}
    with Progress(len(pairs), "eval", unit="case", every_s=10.0) as bar:  # plain lines when not on a terminal
        for name, pred_path, ref_case in pairs:
            scores[name] = score_pair(pred_path, ref_case, len(class_names), policy)
            bar.update(1)
    summary = summarize(scores, class_names)
    title = f"{pred_dir} vs {refs.where} (empty masks: {args.empty_policy})"
    out = Path(args.out) if args.out else pred_dir
    qc_text = qc_report(info, pred_dir / PREDICTION_INFO, scores)
    write_scores_csv(out / "scores.csv", scores, class_names)
    write_text_atomic(out / "summary.md", summary_markdown(summary, title) + qc_text)
    print(summary_markdown(summary, title) + qc_text)
    print(f"wrote {out / 'scores.csv'} and {out / 'summary.md'}")
    return 0


# the share of scored scans that counts as the worst, which the QC flag should catch
WORST_FRACTION = 0.1


def qc_report(info: Optional[PredictionInfo], info_path: Path, scores: dict[str, dict[int, ClassScore]]) -> str:
    """Markdown of how the predictions' quality control did against their true Dice ('' when
    the predictions carry none, or none of the scored scans has an estimate)."""
    if info is None or not info.qc:
        return ""
    qc = qc_from_json(info.qc, str(info_path))
    true_dice = {}
    for case, per_class in scores.items():
        values = [s.dice for s in per_class.values() if not np.isnan(s.dice)]
        if values:
            true_dice[case] = float(np.mean(values))
    if not set(qc) & set(true_dice):
        return ""
    return "\n" + check_markdown(check_qc(qc, true_dice, WORST_FRACTION), WORST_FRACTION)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps (NIfTI)")
    p.add_argument("--ref", required=True, metavar="DIR",
                   help="a dataset folder in any supported layout, or a folder of reference label maps")
    p.add_argument("--layout", choices=LAYOUTS, help="read --ref as a dataset of this layout (default: detect)")
    p.add_argument("--out", metavar="DIR", help="where to write scores.csv and summary.md (default: --pred)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="every class name in label order, background first (when neither the references "
                        "nor the predictions' predictions.json name them)")
    p.add_argument("--split", metavar="FILE", help="score exactly the cases of one subset of this split")
    p.add_argument("--subset", choices=("train", "val", "test"),
                   help="subset of --split (default: test); alone, a subset of the dataset's own split")
    p.add_argument(
        "--empty-policy",
        choices=sorted(EMPTY_POLICIES),
        default="penalty",
        help="how classes with an empty mask score (see seg/metrics.py; default: penalty)",
    )
    p.set_defaults(func=run)
