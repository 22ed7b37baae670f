"""nnU-Net raw reader (dataset.json v1/v2, patient_of, unlabeled folders, split.json) and the
NIfTI round trip it relies on (affine and header kept)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from layouts import affine_zyx, save_nifti_zyx, write_nnunet
from cctr.seg.data.case import CaseError
from cctr.seg.data.nifti import read_nifti, write_nifti
from cctr.seg.data.readers import open_dataset

SPACING = (8.0, 1.5, 1.25)


def test_cases_patients_and_geometry(tmp_path: Path):
    written = write_nnunet(tmp_path, unlabeled=("patient003_ED",), spacing=SPACING)
    ds = open_dataset(tmp_path)
    assert ds.layout == "nnunet" and ds.class_names == ("background", "RV", "MYO", "LV")
    assert ds.patient_ids == ("patient001", "patient002", "patient003")
    assert [r.case_id for r in ds.of_patients(["patient002"])] == ["patient002_ED", "patient002_ES"]
    assert [r.has_label for r in ds.refs] == [True, True, True, True, False]
    for i, ref in enumerate(ds.refs):
        case = ref.load()
        image, label = written.volumes[ref.case_id]
        np.testing.assert_array_equal(case.image, image)
        if label is None:
            assert case.label is None
        else:
            np.testing.assert_array_equal(case.label, label)
        assert case.spacing == SPACING
        np.testing.assert_allclose(case.affine, affine_zyx(SPACING, (10.0 + i, -20.0, 5.0)))


def test_case_without_patient_of_entry_is_its_own_patient(tmp_path: Path):
    write_nnunet(tmp_path, labeled=("a", "b", "c"), patient_of={"a": "P1", "b": "P1"})
    assert [(r.case_id, r.patient_id) for r in open_dataset(tmp_path).refs] == [("a", "P1"), ("b", "P1"), ("c", "c")]


def test_v1_labels_form(tmp_path: Path):
    write_nnunet(tmp_path, labeled=("x",), class_names=("background", "liver", "tumour"), labels_v1=True)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert open_dataset(tmp_path).class_names == ("background", "liver", "tumour")


def test_images_ts_with_labels_ts_are_labeled(tmp_path: Path):
    written = write_nnunet(tmp_path, labeled=("a",), unlabeled=("t1", "t2"), unlabeled_dir="imagesTs")
    label = written.volumes["a"][1]
    save_nifti_zyx(tmp_path / "labelsTs" / "t1.nii.gz", label, affine_zyx(SPACING, (11.0, -20.0, 5.0)))
    ds = open_dataset(tmp_path)
    assert {r.case_id: r.has_label for r in ds.refs} == {"a": True, "t1": True, "t2": False}
    np.testing.assert_array_equal(ds.ref("t1").load().label, label)


def test_split_json_is_attached_and_checked(tmp_path: Path):
    split = {"train": ["patient001"], "val": [], "test": ["patient002"], "labeled_sets": {"1": ["patient001"]}}
    write_nnunet(tmp_path, split=split)
    assert open_dataset(tmp_path).default_split.labeled("1") == ("patient001",)
    split["test"] = ["patient002", "patient404"]
    (tmp_path / "split.json").write_text(json.dumps(split))
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert str(tmp_path / "split.json") in str(err.value) and "patient404" in str(err.value)


def test_channel_option(tmp_path: Path):
    write_nnunet(tmp_path, labeled=("a",))
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T1", "1": "T2"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    second = np.full((4, 12, 10), 7.0, np.float32)
    save_nifti_zyx(tmp_path / "imagesTr" / "a_0001.nii.gz", second, affine_zyx(SPACING, (10.0, -20.0, 5.0)))
    np.testing.assert_array_equal(open_dataset(tmp_path, channel=1).ref("a").load().image, second)
    with pytest.raises(CaseError, match="channel 2"):
        open_dataset(tmp_path, channel=2)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda root: (root / "labelsTr" / "a.nii.gz").unlink(), "labelsTr/a.nii.gz: missing"),
        (lambda root: _set_meta(root, numTraining=5), "numTraining is 5"),
        (lambda root: _set_meta(root, file_ending=".png"), "file_ending '.png'"),
        (lambda root: _set_meta(root, labels={"background": 0, "RV": 2}), "must run 0..1"),
        (lambda root: _set_meta(root, patient_of={"zzz": "P"}), "patient_of names cases that have no image"),
        (lambda root: (root / "dataset.json").unlink(), "dataset.json: missing"),
    ],
)
def test_inconsistent_folder_is_refused_at_open(tmp_path: Path, edit, message: str):
    write_nnunet(tmp_path, labeled=("a",))
    edit(tmp_path)
    with pytest.raises(CaseError, match=message):
        open_dataset(tmp_path, layout="nnunet")


def _set_meta(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_unknown_option_is_refused(tmp_path: Path):
    write_nnunet(tmp_path, labeled=("a",))
    with pytest.raises(ValueError, match="spacing"):
        open_dataset(tmp_path, spacing=(1, 1, 1))


def test_opening_reads_no_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_nnunet(tmp_path)
    opened: list[str] = []
    real = nib.load
    monkeypatch.setattr(nib, "load", lambda f, *a, **k: opened.append(str(f)) or real(f, *a, **k))
    ds = open_dataset(tmp_path)
    assert len(ds) == 4 and opened == []
    ds.ref("patient001_ES").load()
    assert len(opened) == 2


def test_nifti_round_trip_keeps_affine_header_and_values(tmp_path: Path):
    # An oblique affine and a scaled int16 source, as scanners write them.
    theta = np.deg2rad(20)
    affine = np.array([[np.cos(theta) * 1.4, -np.sin(theta) * 1.4, 0, -80.0],
                       [np.sin(theta) * 1.4, np.cos(theta) * 1.4, 0, 12.5],
                       [0, 0, 6.0, 40.0],
                       [0, 0, 0, 1]])
    data_xyz = np.arange(10 * 9 * 5, dtype=np.int16).reshape(10, 9, 5)
    src = nib.Nifti1Image(data_xyz, affine)
    src.header.set_slope_inter(0.5, 3.0)
    src.header["descrip"] = b"scanner xyz"
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, str(tmp_path / "src.nii.gz"))

    array, spacing, aff, header = read_nifti(tmp_path / "src.nii.gz")
    assert array.shape == (5, 9, 10)  # (Z, Y, X)
    assert array[2, 3, 4] == data_xyz[4, 3, 2] * 0.5 + 3.0
    assert spacing == pytest.approx((6.0, 1.4, 1.4))
    write_nifti(tmp_path / "out.nii.gz", array.astype(np.float32), aff, header)
    write_nifti(tmp_path / "lab.nii.gz", (array > 100).astype(np.uint8), aff, header)

    back, spacing2, aff2, header2 = read_nifti(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(aff2, affine, atol=1e-5)
    assert spacing2 == pytest.approx(spacing)
    assert header2["descrip"] == b"scanner xyz" and header2.get_xyzt_units() == ("mm", "sec")
    assert header2["sform_code"] == header["sform_code"] and header2["qform_code"] == header["qform_code"]
    lab, _, aff3, lab_header = read_nifti(tmp_path / "lab.nii.gz")
    assert lab.dtype == np.uint8 and lab_header.get_slope_inter() == (None, None)
    np.testing.assert_array_equal(lab, array > 100)
    np.testing.assert_allclose(aff3, affine, atol=1e-5)


def test_mixed_nii_and_nii_gz_endings_are_named_not_counted(tmp_path: Path):
    root = write_nnunet(tmp_path / "nn").root
    plain = root / "imagesTr" / "patient002_ES_0000.nii"
    nib.save(nib.load(str(root / "imagesTr" / "patient002_ES_0000.nii.gz")), str(plain))
    (root / "imagesTr" / "patient002_ES_0000.nii.gz").unlink()
    with pytest.raises(CaseError) as info:
        open_dataset(root)
    message = str(info.value)
    assert message.startswith(f"{plain}: ends in .nii but ") and "file_ending '.nii.gz'" in message
    assert "imagesTr/ mixes .nii and .nii.gz files" in message and "numTraining" not in message
