"""``cctr predict``: segment NIfTI volumes with a trained student.

    cctr predict --ckpt CKPT_OR_RUN_DIR --in FILE_OR_DIR --out DIR [--student a|b]

``--in`` is one ``.nii``/``.nii.gz`` volume or a folder of them (its top level only). Each
output ``DIR/<case>.nii.gz`` is a uint8 label map with the input's affine and header, so it
lines up with the input in any viewer; ``<case>`` is the input name without its extension
and without an nnU-Net channel suffix ``_0000``. A run folder as ``--ckpt`` means its
``best.pt`` (or ``last.pt`` when there is no best).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg.data.case import CaseError
from seg.data.nifti import read_nifti, write_nifti
from seg.inference import load_students

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint (.pt) or run folder")
    p.add_argument("--in", dest="inputs", type=Path, required=True, help="a NIfTI file or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="folder for the label maps")
    p.add_argument("--student", choices=("a", "b"), default="a", help="which student predicts (default a)")
    p.set_defaults(func=run_predict)


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


def run_predict(args: argparse.Namespace) -> int:
    trained = load_students(checkpoint_path(args.ckpt))
    if args.student not in trained.students:
        raise CaseError(f"{args.ckpt}: checkpoint has no student {args.student!r} (it has {sorted(trained.students)})")
    files = input_volumes(args.inputs)
    names = [case_name(f) for f in files]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise CaseError(f"{args.inputs}: several inputs would write the same output: {clash}")
    for path, name in tqdm(list(zip(files, names)), desc="predict", unit="volume", disable=None):
        image, _, affine, header = read_nifti(path)
        if not np.isfinite(image).all():
            raise CaseError(f"{path}: image has NaN or inf voxels")
        labels = trained.predict(image.astype(np.float32), args.student)
        write_nifti(args.out / f"{name}.nii.gz", labels, affine, header)
    print(f"wrote {len(files)} label map(s) with student {args.student} to {args.out}", file=sys.stdout)
    return 0
