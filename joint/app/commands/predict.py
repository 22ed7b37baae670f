"""``cctr predict``: segment NIfTI volumes with a trained student.

    cctr predict --ckpt CKPT_OR_RUN_DIR --in FILE_OR_DIR --out DIR [--student a|b] [--overwrite]
                 [--qc-data DIR [--qc-split FILE] [--reg-backend SPEC]] [--qc-threshold T] [--qc-fraction F]
                 [--no-qc]

``--in`` is one ``.nii``/``.nii.gz`` volume or a folder of them (its top level only). Each
output ``DIR/<case>.nii.gz`` is a uint8 label map with the input's affine and header, so it
lines up with the input in any viewer; ``<case>`` is the input name without its extension
and without an nnU-Net channel suffix ``_0000``. A run folder as ``--ckpt`` means its
``best.pt`` (or ``last.pt`` when there is no best). ``DIR/predictions.json`` records the
checkpoint, its class names and the student (:mod:`seg.prediction_info`); ``cctr eval``
takes the class names from it when the references do not name them.

``--out`` is never an input's own folder nor a folder of a dataset (``imagesTr``,
``labelsTr``, ... beside a ``dataset.json``, or a dataset's top level), even with
``--overwrite``: a label map there would replace a scan or its ground truth. A file already at
an output path is replaced only when an earlier ``cctr predict`` wrote it (its
``predictions.json`` lists it) or with ``--overwrite``.

Every input is read in the closest canonical orientation, as training read its volumes
(:mod:`seg.data.orientation`), and its label map is written back in the input's own
orientation and affine: a scan stored flipped or with its axes permuted gets the same labels
in world space.

Every input is read and checked (3D, finite voxels, geometry) before any label map is
written, so a bad input anywhere writes nothing. When the checkpoint holds the training
geometry (:mod:`seg.geometry_check`), an input whose spacing, field of view or axis order is
far from it, or whose axes are turned far further from the world axes than any training
volume's (an oblique scan), gets a warning on stderr; ``--strict-geometry`` refuses it
instead. A constant image (every voxel the same) has nothing to segment: it gets a warning
and an all-background label map, not the student's guess.

Quality control (:mod:`joint.qc`, :mod:`joint.app.quality`): with two students in the
checkpoint, or with ``--qc-data``, each scan gets an estimated Dice: the Dice between the
written student's map and the other student's, and, with ``--qc-data DIR`` (the dataset whose
labeled set the checkpoint trained with; registration ``--reg-backend``, else the
checkpoint's own), the Dice between the written map and the best-fitting labeled scan's label
warped onto the scan; the mean of those available. A scan whose estimate is below
``--qc-threshold`` or among the lowest ``--qc-fraction`` of the batch is flagged for a look.
Both go into ``predictions.json`` (``qc``) and ``DIR/qc.csv`` (lowest estimate first);
``cctr eval`` then reports how well the estimate ranks the true Dice. ``--no-qc`` skips it
(it costs the second student's prediction and, with ``--qc-data``, a registration per
labeled scan).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cctr.joint.app.quality import constant_scan, evidence_for, load_atlases, merged_qc, new_scan
from cctr.joint.qc import QC_FILE, QCConfig, assess, write_qc_csv
from cctr.joint.scan_evidence import ScanEvidence, student_labels
from cctr.seg.data.case import CaseError
from cctr.seg.data.nifti import NIFTI_SUFFIXES, read_nifti, write_nifti
from cctr.seg.data.orientation import obliquity_deg
from cctr.seg.geometry_check import geometry_warnings
from cctr.seg.inference import TrainedStudents, load_students
from cctr.seg.overwrite import refuse_foreign
from cctr.seg.prediction_info import PREDICTION_INFO, read_prediction_info, write_prediction_info
from cctr.seg.progress import Progress



def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint (.pt) or run folder")
    p.add_argument("--in", dest="inputs", type=Path, required=True, help="a NIfTI file or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="folder for the label maps")
    p.add_argument("--student", choices=("a", "b"), default="a", help="which student predicts (default a)")
    p.add_argument("--strict-geometry", action="store_true",
                   help="refuse inputs whose spacing / field of view / axes are far from the training data (default: warn)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files at the output paths that an earlier cctr predict did not write")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    qc = QCConfig()
    p.add_argument("--qc-data", type=Path, default=None, metavar="DIR",
                   help="dataset whose labeled set the checkpoint trained with: its scans, warped onto each input, "
                        "add the atlas fit to the quality control")
    p.add_argument("--qc-split", type=Path, default=None, metavar="FILE",
                   help="split JSON naming that labeled set (default: the --qc-data folder's split.json)")
    p.add_argument("--reg-backend", default=None, metavar="SPEC",
                   help="registration for the atlas fit (default: the checkpoint's own)")
    p.add_argument("--qc-threshold", type=float, default=qc.threshold,
                   help=f"flag scans whose estimated Dice is below this (default {qc.threshold:g})")
    p.add_argument("--qc-fraction", type=float, default=qc.fraction,
                   help=f"flag the lowest estimates, this share of the batch (default {qc.fraction:g})")
    p.add_argument("--no-qc", action="store_true", help="no quality control (no second student, no registration)")
    p.set_defaults(func=run_predict)


# the folders of a dataset (nnU-Net's layout) that hold scans or ground truth
DATASET_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "imagesUnlabeled")
DATASET_MARKERS = ("dataset.json", "split.json")


def check_output_folder(out: Path, files: list[Path], outputs: list[str], overwrite: bool) -> tuple[str, ...]:
    """Refuse an ``--out`` where the label maps ``outputs`` would replace data: an input's own
    folder or a dataset's folder (always), or files an earlier ``cctr predict`` did not write
    there (unless ``overwrite``). Returns the label maps earlier predictions wrote there."""
    target = out.resolve()
    if any(f.resolve().parent == target for f in files):
        raise CaseError(f"{out}: is the folder of the input volumes; label maps there could replace them "
                        "(choose another --out)")
    dataset_root = next((d for d in (target, target.parent) if any((d / m).is_file() for m in DATASET_MARKERS)), None)
    if dataset_root is not None and (target == dataset_root or target.name in DATASET_FOLDERS):
        raise CaseError(f"{out}: is a folder of the dataset {dataset_root}; label maps there could replace its "
                        "scans or ground truth (choose another --out)")
    try:
        info = read_prediction_info(out)
    except CaseError:   # not a predictions.json: the user's file, like any other in the way
        info = None
    ours = set(info.files) if info is not None else set()
    if not overwrite:
        taken = [name for name in outputs if (out / name).exists() and name not in ours]
        if (out / PREDICTION_INFO).exists() and info is None:
            taken.append(PREDICTION_INFO)
        refuse_foreign(out, taken)
    return tuple(sorted(n for n in ours if (out / n).is_file()))


def checkpoint_path(path: Path) -> Path:
    """``path`` itself, or for a run folder its ``best.pt``, else its ``last.pt``."""
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: run folder has no best.pt or last.pt")
    return path


def input_volumes(path: Path) -> list[Path]:
    """The NIfTI files ``--in`` names."""
    if path.is_file():
        if not path.name.endswith(NIFTI_SUFFIXES):
            raise CaseError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        if not found:
            raise CaseError(f"{path}: folder holds no .nii or .nii.gz files")
        return found
    raise FileNotFoundError(f"{path}: no such file or folder")


def case_name(path: Path) -> str:
    """File name without the NIfTI extension and without an nnU-Net channel suffix."""
    name = next(path.name[: -len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s))
    return name[:-5] if name.endswith("_0000") else name


# an input's axes may turn this much further from the world axes than the most oblique training volume's
OBLIQUE_MARGIN_DEG = 20.0


def orientation_warnings(geometry: dict, affine: np.ndarray) -> list[str]:
    """A warning when the input is far more oblique than the training volumes: reading it in
    the closest canonical orientation cannot make its slices cut the anatomy as training's did."""
    turned, trained = obliquity_deg(affine), float(geometry.get("oblique_deg_max", 0.0))
    if turned <= trained + OBLIQUE_MARGIN_DEG:
        return []
    return [f"its axes are turned {turned:.0f} degrees from the nearest world axes (training volumes: up to "
            f"{trained:.0f}); its slices cut the anatomy unlike training's"]


def check_inputs(files: list[Path], trained: TrainedStudents, strict: bool) -> None:
    """Read every input once before anything is written: CaseError for an unreadable, non-3D
    or non-finite volume, and geometry and orientation warnings on stderr (CaseError with
    ``strict``)."""
    for path in files:
        image, spacing, affine, _ = read_nifti(path)
        if not np.isfinite(image).all():
            raise CaseError(f"{path}: image has NaN or inf voxels")
        if image.size and image.min() == image.max():
            print(f"cctr: warning: {path}: every voxel is {image.flat[0]:g}: nothing to segment; "
                  "its label map is all background", file=sys.stderr)
            continue
        if trained.geometry is None:
            continue  # an older checkpoint without training geometry: nothing to compare with
        warnings = (geometry_warnings(trained.geometry, spacing, image.shape)
                    + orientation_warnings(trained.geometry, affine))
        if warnings and strict:
            raise CaseError(f"{path}: unlike the training data: {'; '.join(warnings)} (drop --strict-geometry to predict anyway)")
        for text in warnings:
            print(f"cctr: warning: {path}: {text}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    trained = load_students(checkpoint_path(args.ckpt))
    if args.student not in trained.students:
        raise CaseError(f"{args.ckpt}: checkpoint has no student {args.student!r} (it has {sorted(trained.students)})")
    files = input_volumes(args.inputs)
    names = [case_name(f) for f in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise CaseError(f"{args.inputs}: several inputs would write the same output: {clash}")
    outputs = [f"{name}.nii.gz" for name in names]
    qc_cfg = QCConfig(args.qc_threshold, args.qc_fraction)
    if (args.reg_backend or args.qc_split) and args.qc_data is None:
        raise ValueError("--reg-backend and --qc-split are for the atlas fit of --qc-data DIR; give --qc-data")
    with_qc = not args.no_qc and (len(trained.students) > 1 or args.qc_data is not None)
    earlier = check_output_folder(args.out, files, outputs, args.overwrite)
    if with_qc and not args.overwrite and (args.out / QC_FILE).exists() and not (args.out / PREDICTION_INFO).is_file():
        refuse_foreign(args.out, [QC_FILE])   # a qc.csv no cctr predict wrote
    check_inputs(files, trained, args.strict_geometry)
    atlases = (load_atlases(checkpoint_path(args.ckpt), args.qc_data, args.qc_split, args.reg_backend)
               if with_qc and args.qc_data is not None else None)
    evidence: dict[str, ScanEvidence] = {}
    with Progress(len(files), "predict", unit="volume", every_s=10.0, enabled=not args.no_progress) as bar:
        for path, name, output in zip(files, names, outputs):
            image, spacing, affine, header = read_nifti(path)
            if image.min() == image.max():    # warned about above: a student's guess on no signal is noise
                labels = {args.student: np.zeros(image.shape, np.uint8)}
                evidence[name] = constant_scan(name)
            elif with_qc:
                labels = student_labels(trained, image)
                scan = new_scan(name, path, image, spacing, affine, trained.class_names)
                evidence[name] = evidence_for(scan, labels, args.student, len(trained.class_names), atlases)
            else:
                labels = {args.student: trained.predict(image.astype(np.float32), args.student)}
            write_nifti(args.out / output, labels[args.student], affine, header)
            bar.update(1)
    qc = assess(evidence, qc_cfg) if with_qc else {}
    info = read_prediction_info(args.out) if qc else None
    entries = (merged_qc(info.qc if info else {}, [n[: -len(".nii.gz")] for n in earlier], qc,
                         str(args.out / PREDICTION_INFO)) if qc else None)
    write_prediction_info(args.out, checkpoint_path(args.ckpt), trained.class_names, args.student, trained.step,
                          files=[*earlier, *outputs], qc=entries)
    print(f"wrote {len(files)} label map(s) with student {args.student} to {args.out}", file=sys.stdout)
    if qc:
        write_qc_csv(args.out / QC_FILE, qc)
        flagged = sorted((q for q in qc.values() if q.flag), key=lambda q: q.estimated_dice)
        print(f"quality control: {len(flagged)} of {len(qc)} scan(s) to check (estimated Dice below "
              f"{qc_cfg.threshold:g} or the lowest {100 * qc_cfg.fraction:g} %): "
              + (", ".join(f"{q.case} ({q.estimated_dice:.3f})" for q in flagged) or "none")
              + f"; see {args.out / QC_FILE}")
    return 0
