"""Bad input: each kind gives a CaseError that names the offending file and the problem."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from layouts import affine_zyx, save_nifti_zyx, write_acdc_raw, write_nnunet, write_ssl4mis
from cctr.seg.data.case import CaseError
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.readers import open_dataset

SHAPE = (4, 12, 10)
SPACING = (8.0, 1.5, 1.25)


@pytest.fixture
def nn(tmp_path: Path) -> Path:
    write_nnunet(tmp_path / "nn", labeled=("p1_ED",), shape=SHAPE, spacing=SPACING)
    return tmp_path / "nn"


def _load_error(root: Path) -> str:
    ds = open_dataset(root)
    with pytest.raises(CaseError) as err:
        ds.refs[0].load()
    return str(err.value)


def test_corrupt_file(nn: Path):
    image = nn / "imagesTr" / "p1_ED_0000.nii.gz"
    image.write_bytes(b"not a nifti file" * 20)
    msg = _load_error(nn)
    assert str(image) in msg and "cannot read" in msg


def test_truncated_file(nn: Path):
    label = nn / "labelsTr" / "p1_ED.nii.gz"
    data = label.read_bytes()
    label.write_bytes(data[: len(data) // 2])
    msg = _load_error(nn)
    assert str(label) in msg and "cannot read" in msg


def test_4d_where_3d_expected(nn: Path):
    image = nn / "imagesTr" / "p1_ED_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12, 4, 3), np.float32), affine_zyx(SPACING)), str(image))
    msg = _load_error(nn)
    assert str(image) in msg and "expected a 3D volume, got 4D" in msg


def test_image_label_shape_mismatch(nn: Path):
    label = nn / "labelsTr" / "p1_ED.nii.gz"
    save_nifti_zyx(label, np.zeros((SHAPE[0] + 1, *SHAPE[1:]), np.uint8), affine_zyx(SPACING, (10.0, -20.0, 5.0)))
    msg = _load_error(nn)
    assert str(label) in msg and "(5, 12, 10)" in msg and "does not match" in msg


def test_image_label_affine_mismatch(nn: Path):
    label = nn / "labelsTr" / "p1_ED.nii.gz"
    save_nifti_zyx(label, np.zeros(SHAPE, np.uint8), affine_zyx(SPACING, (12.0, -20.0, 5.0)))
    msg = _load_error(nn)
    assert str(label) in msg and "affine differs" in msg


def test_labels_outside_declared_classes(nn: Path):
    label = nn / "labelsTr" / "p1_ED.nii.gz"
    bad = np.zeros(SHAPE, np.uint8)
    bad[0, 0, :2] = (2, 7)
    save_nifti_zyx(label, bad, affine_zyx(SPACING, (10.0, -20.0, 5.0)))
    msg = _load_error(nn)
    assert str(label) in msg and "[7]" in msg and "outside the declared classes" in msg


def test_nan_and_inf_voxels(nn: Path):
    image = nn / "imagesTr" / "p1_ED_0000.nii.gz"
    arr = np.ones(SHAPE, np.float32)
    arr[1, 2, 3], arr[0, 0, 0] = np.nan, np.inf
    save_nifti_zyx(image, arr, affine_zyx(SPACING, (10.0, -20.0, 5.0)))
    msg = _load_error(nn)
    assert str(image) in msg and "2 NaN or inf" in msg


def _nifti_with_raw_pixdim(path: Path, shape_xyz: tuple[int, int, int], pixdim_xyz: list[float]) -> None:
    """Write a NIfTI whose header says ``pixdim_xyz`` exactly (nibabel's writer would repair it)."""
    data = np.zeros(shape_xyz, np.float32)
    hdr = nib.Nifti1Image(data, np.eye(4)).header.copy()
    hdr["pixdim"][1:4] = pixdim_xyz
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))


@pytest.mark.parametrize("pixdim", [[1.5, 0.0, 8.0], [1.5, 1.5, -8.0]])
def test_zero_or_negative_spacing_in_file(nn: Path, pixdim: list[float]):
    image = nn / "imagesTr" / "p1_ED_0000.nii.gz"
    _nifti_with_raw_pixdim(image, SHAPE[::-1], pixdim)
    msg = _load_error(nn)
    assert str(image) in msg and "spacing" in msg and "positive" in msg


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (10.0, -1.0, 1.0)])
def test_zero_or_negative_spacing_option(tmp_path: Path, spacing: tuple[float, float, float]):
    write_ssl4mis(tmp_path, patients=(1,), lists={"train": [1]})
    with pytest.raises(CaseError, match="spacing must be three positive numbers"):
        open_dataset(tmp_path, spacing=spacing)


def test_info_cfg_without_ed_es(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=(1, 2), write_4d=False)
    cfg = tmp_path / "training" / "patient002" / "Info.cfg"
    cfg.write_text("ED: 1\nGroup: NOR\nNbFrame: 30\n")
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert str(cfg) in str(err.value) and "no ES entry" in str(err.value)


def test_empty_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseError, match="empty folder"):
        open_dataset(tmp_path / "empty")


def test_unknown_layout(tmp_path: Path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert "unknown dataset layout" in str(err.value) and "notes.txt" in str(err.value)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "out" / "pred.nii.gz"

    def half_write(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(target, np.zeros(SHAPE, np.uint8), np.eye(4))
    assert list(target.parent.iterdir()) == []
