"""Raw ACDC reader: ED/ES frames from Info.cfg, NIfTI geometry kept, lazy loading, folder variants."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from layouts import affine_zyx, write_acdc_raw
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import detect_layout, open_dataset
from cctr.seg.data.readers.acdc import ACDC_CLASSES


def test_ed_es_cases_match_what_was_written(tmp_path: Path):
    written = write_acdc_raw(tmp_path, patients=(3, 7), frames={7: (2, 9)})
    ds = open_dataset(tmp_path)
    assert ds.layout == "acdc" and ds.class_names == ("background", "RV", "MYO", "LV")
    assert ds.case_ids == ("patient003_frame01", "patient003_frame12", "patient007_frame02", "patient007_frame09")
    assert ds.patient_ids == ("patient003", "patient007")
    assert [r.meta["phase"] for r in ds.refs] == ["ED", "ES", "ED", "ES"]
    assert ds.refs[0].meta["group"] == "DCM"
    for ref in ds.refs:
        case = ref.load()
        image, label = written.volumes[ref.case_id]
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.image, image)
        np.testing.assert_array_equal(case.label, label)
        assert case.spacing == (10.0, 1.5625, 1.5625)
        n = int(ref.patient_id[-3:])
        np.testing.assert_allclose(case.affine, affine_zyx((10.0, 1.5625, 1.5625), (-n, 2.0 * n, 0.5)))
        assert case.class_names == ACDC_CLASSES
        assert case.sources[0].name == f"{ref.case_id}.nii.gz" and case.sources[1].name == f"{ref.case_id}_gt.nii.gz"


def test_4d_cine_and_other_files_are_ignored(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=(1,))
    folder = tmp_path / "training" / "patient001"
    assert (folder / "patient001_4d.nii.gz").is_file()
    (folder / "patient001_frame05.nii.gz").write_bytes((folder / "patient001_frame01.nii.gz").read_bytes())
    ds = open_dataset(tmp_path)
    assert ds.case_ids == ("patient001_frame01", "patient001_frame12")


def test_testing_patients_without_gt_are_unlabeled(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=(1,), testing=(101,), write_4d=False)
    ds = open_dataset(tmp_path)
    labeled = {r.case_id: r.has_label for r in ds.refs}
    assert labeled == {"patient001_frame01": True, "patient001_frame12": True,
                       "patient101_frame01": False, "patient101_frame12": False}
    case = ds.ref("patient101_frame12").load()
    assert case.label is None and "group" not in ds.ref("patient101_frame01").meta


@pytest.mark.parametrize("where", ["database", "training"])
def test_release_folder_variants(tmp_path: Path, where: str):
    # The current release nests training/ under database/; users may also point at training/ itself.
    if where == "database":
        write_acdc_raw(tmp_path / "ACDC" / "database", patients=(4,), write_4d=False)
        root = tmp_path / "ACDC"
    else:
        write_acdc_raw(tmp_path / "ACDC", patients=(4,), write_4d=False)
        root = tmp_path / "ACDC" / "training"
    assert detect_layout(root) == "acdc"
    assert open_dataset(root).case_ids == ("patient004_frame01", "patient004_frame12")


def test_opening_reads_no_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_acdc_raw(tmp_path, patients=(1, 2, 3), write_4d=False)

    opened: list[str] = []
    real_load = nib.load

    def counting_load(filename, *args, **kwargs):
        opened.append(str(filename))
        return real_load(filename, *args, **kwargs)

    monkeypatch.setattr(nib, "load", counting_load)
    ds = open_dataset(tmp_path)
    assert len(ds) == 6 and opened == []
    ds.ref("patient002_frame12").load()
    assert sorted(Path(f).name for f in opened) == ["patient002_frame12.nii.gz", "patient002_frame12_gt.nii.gz"]


def test_missing_frame_file_is_named(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=(1,), write_4d=False)
    missing = tmp_path / "training" / "patient001" / "patient001_frame12.nii.gz"
    missing.unlink()
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert str(missing) in str(err.value) and "ES" in str(err.value)


def test_partial_copy_gets_no_default_split(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=(1, 99), write_4d=False)
    assert open_dataset(tmp_path).default_split is None
