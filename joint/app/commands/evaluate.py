"""``cctr eval``: score predicted label maps against reference label maps, the way the field
scores (:mod:`seg.metrics`), and write ``scores.csv`` and ``summary.md`` (:mod:`seg.report`).

Files pair by case name: the file name without ``.nii.gz`` / ``.nii``. ``--ref`` is a folder
of reference label maps, or an nnU-Net style dataset folder whose ``labelsTr/`` holds them.
Class names come from ``--classes`` or else from the ``dataset.json`` of that dataset (in
``--ref`` or, for ``--ref DATASET/labelsTr``, its parent). Without ``--split`` every
prediction is scored and must have a reference; with ``--split FILE`` exactly the cases of
the chosen subset's patients are scored and each must have a prediction. Every pair must
agree in shape and affine; the spacing used for distances is the reference's.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from seg.data.case import CaseError, label_to_uint8
from seg.data.nifti import AFFINE_ATOL_MM, read_nifti
from seg.data.split import load_split
from seg.metrics import EMPTY_POLICIES, ClassScore, EmptyPolicy, empty_policy, score_case
from seg.progress import Progress
from seg.report import summarize, summary_markdown, write_scores_csv, write_summary_markdown

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Reference:
    """Where reference labels live and what the dataset says about them."""

    labels_dir: Path
    class_names: Optional[tuple[str, ...]]  # from dataset.json, background first
    patient_of: dict[str, str]  # case id -> patient id; cases not listed are their own patient


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


def _class_names_of(labels: object, where: Path) -> tuple[str, ...]:
    """Class names from a dataset.json ``labels`` entry: nnU-Net v2 ``{name: index}`` or v1
    ``{"index": name}``; indices must be exactly 0 .. C-1."""
    if not isinstance(labels, dict) or not labels:
        raise CaseError(f"{where}: 'labels' must be a non-empty mapping of class names and indices")
    try:
        if all(isinstance(v, int) for v in labels.values()):
            by_index = {int(v): str(k) for k, v in labels.items()}
        else:
            by_index = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError) as exc:
        raise CaseError(f"{where}: 'labels' must map class names to integer indices ({exc})") from exc
    if sorted(by_index) != list(range(len(labels))):
        raise CaseError(f"{where}: label indices must be 0..{len(labels) - 1}, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(labels)))


def find_reference(ref: Path) -> Reference:
    """Resolve ``--ref``: a labels folder, a dataset folder with ``labelsTr/``, or ``labelsTr``
    itself; read ``dataset.json`` when there is one."""
    if not ref.is_dir():
        raise CaseError(f"{ref}: reference folder not found")
    if (ref / "labelsTr").is_dir():
        labels_dir, meta = ref / "labelsTr", ref / "dataset.json"
    elif (ref.parent / "dataset.json").is_file() and ref.name == "labelsTr":
        labels_dir, meta = ref, ref.parent / "dataset.json"
    else:
        labels_dir, meta = ref, ref / "dataset.json"
    if not meta.is_file():
        return Reference(labels_dir, None, {})
    try:
        info = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseError(f"{meta}: not valid JSON ({exc})") from exc
    names = _class_names_of(info["labels"], meta) if "labels" in info else None
    patient_of = info.get("patient_of", {})
    if not isinstance(patient_of, dict):
        raise CaseError(f"{meta}: 'patient_of' must map case ids to patient ids")
    patient_of = {str(k): str(v) for k, v in patient_of.items()}
    return Reference(labels_dir, names, patient_of)


def pair_cases(
    preds: dict[str, Path],
    refs: dict[str, Path],
    pred_dir: Path,
    wanted: Optional[Sequence[str]] = None,
) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, reference)`` triples: every prediction, or with ``wanted`` exactly
    those cases; a missing counterpart is an error naming the file that lacks it."""
    if wanted is None:
        if not preds:
            raise CaseError(f"{pred_dir}: no NIfTI predictions (*.nii.gz, *.nii) found")
        unmatched = [p for name, p in preds.items() if name not in refs]
        if unmatched:
            raise CaseError(f"{unmatched[0]}: no reference label map with this case name ({len(unmatched)} unmatched)")
        return [(name, preds[name], refs[name]) for name in preds]
    missing = [name for name in wanted if name not in preds]
    if missing:
        raise CaseError(f"{pred_dir}: no prediction for case(s) {missing} (expected e.g. {missing[0]}.nii.gz)")
    return [(name, preds[name], refs[name]) for name in wanted]


def cases_of_split(split_file: Path, subset: str, reference: Reference, refs: dict[str, Path]) -> list[str]:
    """Reference case names whose patients are in ``subset`` of the split, in file order."""
    split = load_split(split_file)
    patients = set(getattr(split, subset))
    if not patients:
        raise CaseError(f"{split_file}: the {subset!r} subset names no patients")
    chosen = [name for name in refs if reference.patient_of.get(name, name) in patients]
    covered = {reference.patient_of.get(name, name) for name in chosen}
    absent = sorted(patients - covered)
    if absent:
        raise CaseError(f"{split_file}: {subset} patients {absent} have no reference labels in {reference.labels_dir}")
    return chosen


def score_pair(
    pred_path: Path, ref_path: Path, class_names: Sequence[str], policy: EmptyPolicy
) -> dict[int, ClassScore]:
    """Read one prediction and its reference, check they share a grid, and score them."""
    pred, _, pred_affine, _ = read_nifti(pred_path)
    ref, spacing, ref_affine, _ = read_nifti(ref_path)
    if pred.shape != ref.shape:
        raise CaseError(f"{pred_path}: shape {pred.shape} (Z, Y, X) differs from the reference {ref_path} {ref.shape}")
    if not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise CaseError(
            f"{pred_path}: affine differs from the reference {ref_path}, so the label maps are not on one grid:\n"
            f"{np.array2string(pred_affine, precision=4)}\nvs\n{np.array2string(ref_affine, precision=4)}"
        )
    num_classes = len(class_names)
    return score_case(
        label_to_uint8(pred, str(pred_path), num_classes),
        label_to_uint8(ref, str(ref_path), num_classes),
        spacing,
        num_classes,
        policy,
    )


def run(args: argparse.Namespace) -> int:
    pred_dir, reference = Path(args.pred), find_reference(Path(args.ref))
    class_names = tuple(args.classes) if args.classes else reference.class_names
    if class_names is None:
        raise CaseError(f"{args.ref}: no dataset.json with 'labels'; name the classes with --classes background ...")
    if len(class_names) < 2:
        raise CaseError(f"--classes: need background and at least one class, got {list(class_names)}")
    refs = nifti_files(reference.labels_dir)
    wanted = cases_of_split(Path(args.split), args.subset, reference, refs) if args.split else None
    pairs = pair_cases(nifti_files(pred_dir), refs, pred_dir, wanted)

    policy = empty_policy(args.empty_policy)
    scores = {}
    with Progress(len(pairs), "eval", unit="case", every_s=10.0) as bar:  # plain lines when not on a terminal
        for name, pred_path, ref_path in pairs:
            scores[name] = score_pair(pred_path, ref_path, class_names, policy)
            bar.update(1)
    summary = summarize(scores, class_names)
    title = f"{pred_dir} vs {reference.labels_dir} (empty masks: {args.empty_policy})"
    out = Path(args.out) if args.out else pred_dir
    write_scores_csv(out / "scores.csv", scores, class_names)
    write_summary_markdown(out / "summary.md", summary, title)
    print(summary_markdown(summary, title))
    print(f"wrote {out / 'scores.csv'} and {out / 'summary.md'}")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps (NIfTI)")
    p.add_argument(
        "--ref", required=True, metavar="DIR", help="folder of reference label maps, or a dataset with labelsTr/"
    )
    p.add_argument("--out", metavar="DIR", help="where to write scores.csv and summary.md (default: --pred)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="every class name in label order, background first")
    p.add_argument("--split", metavar="FILE", help="score exactly the cases of one subset of this split")
    p.add_argument(
        "--subset", choices=("train", "val", "test"), default="test", help="subset of --split (default: test)"
    )
    p.add_argument(
        "--empty-policy",
        choices=sorted(EMPTY_POLICIES),
        default="penalty",
        help="how classes with an empty mask score (see seg/metrics.py; default: penalty)",
    )
    p.set_defaults(func=run)
