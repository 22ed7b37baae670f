"""Tiny fake releases written in the exact on-disk layout of each dataset the readers support,
for tests (any engineer's: ``from layouts import write_nnunet``).

Every writer returns a :class:`Written`: the root it wrote and, per case id, the ``(Z, Y, X)``
image and label arrays it put on disk, so tests can compare what a reader loads with what
was written. Volumes are small and deterministic: a label map of nested ellipsoids (classes
1..K-1 inside one another) and an image that is brighter where the class is higher, plus noise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import h5py
import nibabel as nib
import numpy as np

ACDC_NAMES = ("background", "RV", "MYO", "LV")


@dataclass
class Written:
    root: Path
    # case id -> (image (Z, Y, X) float32, label (Z, Y, X) uint8 or None), exactly as written
    volumes: dict[str, tuple[np.ndarray, Optional[np.ndarray]]] = field(default_factory=dict)


def fake_volume(seed: int, shape: tuple[int, int, int] = (4, 12, 10), num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic ``(image float32, label uint8)`` pair of ``shape`` (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    centre = rng.uniform(-0.2, 0.2, size=3)
    r = np.sqrt(((z - centre[0]) / 1.2) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, num_classes):
        label[r < 1.0 - k / num_classes] = k
    image = (label.astype(np.float32) / max(num_classes - 1, 1) + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return image, label


def affine_zyx(spacing_zyx: Sequence[float], origin_xyz: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """An axis-aligned NIfTI affine for a (z, y, x) spacing, with an origin in mm."""
    sz, sy, sx = spacing_zyx
    aff = np.diag([sx, sy, sz, 1.0])
    aff[:3, 3] = origin_xyz
    return aff


def save_nifti_zyx(path: Path, array_zyx: np.ndarray, affine: np.ndarray) -> Path:
    """Save a (Z, Y, X) array the way the releases store NIfTI: (X, Y, Z) on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.asarray(array_zyx).transpose(2, 1, 0))
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    nib.save(img, str(path))
    return path


def write_acdc_raw(
    root: Path,
    patients: Sequence[int] = (1, 2),
    frames: Optional[Mapping[int, tuple[int, int]]] = None,
    testing: Sequence[int] = (),
    testing_labels: bool = False,
    shape: tuple[int, int, int] = (4, 12, 10),
    spacing: tuple[float, float, float] = (10.0, 1.5625, 1.5625),
    write_4d: bool = True,
) -> Written:
    """Raw ACDC: ``training/patientXXX/`` (and ``testing/``) with ``Info.cfg``, the 4D cine,
    and the ED and ES frames with their ``_gt`` label maps (testing ones only if ``testing_labels``).
    ``frames`` gives ``(ED, ES)`` per patient number; default ``(1, 12)``."""
    root = Path(root)
    out = Written(root)
    for subset, numbers, labeled in (("training", patients, True), ("testing", testing, testing_labels)):
        for n in numbers:
            pid = f"patient{n:03d}"
            folder = root / subset / pid
            folder.mkdir(parents=True, exist_ok=True)
            ed, es = (frames or {}).get(n, (1, 12))
            group = "" if subset == "testing" else "Group: DCM\n"
            (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\n{group}Height: 184.0\nNbFrame: 30\nWeight: 95.0\n")
            affine = affine_zyx(spacing, (-n, 2.0 * n, 0.5))
            if write_4d:
                cine = np.zeros(shape[::-1] + (3,), dtype=np.int16)
                nib.save(nib.Nifti1Image(cine, affine), str(folder / f"{pid}_4d.nii.gz"))
            for k, frame in enumerate((ed, es)):
                image, label = fake_volume(1000 * n + k, shape)
                case_id = f"{pid}_frame{frame:02d}"
                save_nifti_zyx(folder / f"{case_id}.nii.gz", image, affine)
                if labeled:
                    save_nifti_zyx(folder / f"{case_id}_gt.nii.gz", label, affine)
                out.volumes[case_id] = (image, label if labeled else None)
    return out


def _write_h5(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr, compression="gzip")


def write_ssl4mis(
    root: Path,
    patients: Sequence[int] = (1, 2, 3),
    shape: tuple[int, int, int] = (4, 12, 10),
    volumes: bool = True,
    slices_of: Sequence[int] = (),
    lists: Optional[Mapping[str, Sequence[int]]] = None,
    first_slice: int = 0,
) -> Written:
    """SSL4MIS's ACDC: ``data/patientXXX_frame01.h5`` / ``_frame02.h5`` (``image`` min-max
    scaled to [0, 1], ``label``, both (Z, Y, X)); ``data/slices/..._slice_N.h5`` for the
    patients in ``slices_of`` (N from ``first_slice``); list files from ``lists``
    (``{'train': [...], 'val': [...], 'test': [...]}``, patient numbers, in order)."""
    root = Path(root)
    out = Written(root)
    for n in patients:
        for k in (1, 2):
            case_id = f"patient{n:03d}_frame{k:02d}"
            image, label = fake_volume(100 * n + k, shape)
            image = (image - image.min()) / (image.max() - image.min())
            if volumes:
                _write_h5(root / "data" / f"{case_id}.h5", image=image, label=label)
            if n in slices_of:
                for z in range(shape[0]):
                    _write_h5(root / "data" / "slices" / f"{case_id}_slice_{first_slice + z}.h5", image=image[z], label=label[z])
            if volumes or n in slices_of:
                out.volumes[case_id] = (image.astype(np.float32), label)
    for name, numbers in (lists or {}).items():
        names = [f"patient{n:03d}_frame{k:02d}" for n in numbers for k in (1, 2)]
        (root / f"{name}.list").write_text("".join(f"{v}\n" for v in names))
        if name == "train":
            slice_names = [f"{v}_slice_{first_slice + z}" for v in names for z in range(shape[0])]
            (root / "train_slices.list").write_text("".join(f"{s}\n" for s in slice_names))
    return out


def write_synapse(
    root: Path,
    train_cases: Sequence[int] = (5, 6),
    test_cases: Sequence[int] = (1,),
    n_slices: int = 3,
    shape_yx: tuple[int, int] = (12, 10),
    image_key: str = "image",
    lists_dir: Optional[str] = "lists/lists_Synapse",
) -> Written:
    """TransUNet's Synapse: ``train_npz/caseXXXX_sliceYYY.npz`` (``image_key``, ``label``,
    float32 (Y, X)), ``test_vol_h5/caseXXXX.npy.h5`` (``image``, ``label``, (Z, Y, X)), and
    ``train.txt`` / ``test_vol.txt`` in ``lists_dir`` (None: no lists), cases in the given order."""
    root = Path(root)
    out = Written(root)
    shape = (n_slices, *shape_yx)
    for n in train_cases:
        case_id = f"case{n:04d}"
        image, label = fake_volume(n, shape, num_classes=9)
        (root / "train_npz").mkdir(parents=True, exist_ok=True)
        for z in range(n_slices):
            np.savez(root / "train_npz" / f"{case_id}_slice{z:03d}.npz",
                     **{image_key: image[z], "label": label[z].astype(np.float32)})
        out.volumes[case_id] = (image, label)
    for n in test_cases:
        case_id = f"case{n:04d}"
        image, label = fake_volume(n, shape, num_classes=9)
        _write_h5(root / "test_vol_h5" / f"{case_id}.npy.h5", image=image, label=label.astype(np.float32))
        out.volumes[case_id] = (image, label)
    if lists_dir is not None:
        folder = root / lists_dir
        folder.mkdir(parents=True, exist_ok=True)
        train_lines = [f"case{n:04d}_slice{z:03d}" for n in train_cases for z in range(n_slices)]
        (folder / "train.txt").write_text("".join(f"{s}\n" for s in train_lines))
        (folder / "test_vol.txt").write_text("".join(f"case{n:04d}\n" for n in test_cases))
    return out


def write_nnunet(
    root: Path,
    labeled: Sequence[str] = ("patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"),
    unlabeled: Sequence[str] = (),
    unlabeled_dir: str = "imagesUnlabeled",
    class_names: Sequence[str] = ACDC_NAMES,
    shape: tuple[int, int, int] = (4, 12, 10),
    spacing: tuple[float, float, float] = (8.0, 1.5, 1.25),
    patient_of: Optional[Mapping[str, str]] = None,
    labels_v1: bool = False,
    split: Optional[Mapping[str, object]] = None,
) -> Written:
    """nnU-Net raw: ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, unlabeled images
    in ``unlabeled_dir``, ``dataset.json`` (v2 labels, or v1 with ``labels_v1``) with
    ``patient_of`` (default: the part of the case id before the last ``_``), and ``split.json``
    if ``split`` is given."""
    root = Path(root)
    out = Written(root)
    if patient_of is None:
        patient_of = {c: c.rsplit("_", 1)[0] for c in (*labeled, *unlabeled)}
    for i, case_id in enumerate((*labeled, *unlabeled)):
        image, label = fake_volume(i, shape, num_classes=len(class_names))
        affine = affine_zyx(spacing, (10.0 + i, -20.0, 5.0))
        is_labeled = i < len(labeled)
        folder = "imagesTr" if is_labeled else unlabeled_dir
        save_nifti_zyx(root / folder / f"{case_id}_0000.nii.gz", image, affine)
        if is_labeled:
            save_nifti_zyx(root / "labelsTr" / f"{case_id}.nii.gz", label, affine)
        out.volumes[case_id] = (image, label if is_labeled else None)
    labels = ({str(i): n for i, n in enumerate(class_names)} if labels_v1
              else {n: i for i, n in enumerate(class_names)})
    meta = {
        "name": "fake",
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": len(labeled),
        "file_ending": ".nii.gz",
        "patient_of": dict(patient_of),
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    if split is not None:
        (root / "split.json").write_text(json.dumps(split, indent=2))
    return out
