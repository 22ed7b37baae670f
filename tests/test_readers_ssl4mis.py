"""SSL4MIS ACDC reader: (Z, Y, X) h5 volumes, slices stacked in number order, lists as split,
spacing option and geometry taken from a raw ACDC copy."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from layouts import affine_zyx, write_acdc_raw, write_ssl4mis
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import open_dataset


def test_volumes_read_as_written_with_default_voxel_spacing(tmp_path: Path):
    written = write_ssl4mis(tmp_path, patients=(4, 2), lists={"train": [4, 2]})
    ds = open_dataset(tmp_path)
    assert ds.layout == "acdc-ssl4mis"
    assert ds.case_ids == ("patient002_frame01", "patient002_frame02", "patient004_frame01", "patient004_frame02")
    assert ds.patient_ids == ("patient002", "patient004")
    for ref in ds.refs:
        case = ref.load()
        image, label = written.volumes[ref.case_id]
        np.testing.assert_array_equal(case.image, image)
        np.testing.assert_array_equal(case.label, label)
        assert 0.0 <= case.image.min() and case.image.max() <= 1.0  # the release is already min-max scaled
        assert case.spacing == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(case.affine, np.eye(4))


def test_slice_only_volume_is_stacked_in_numeric_order(tmp_path: Path):
    # 12 slices numbered from 1, as in the released train_slices.list: slice_10 must follow slice_9.
    written = write_ssl4mis(tmp_path, patients=(5,), shape=(12, 6, 5), volumes=False, slices_of=(5,),
                            lists={"train": [5]}, first_slice=1)
    ds = open_dataset(tmp_path)
    case = ds.ref("patient005_frame02").load()
    image, label = written.volumes["patient005_frame02"]
    np.testing.assert_array_equal(case.image, image)
    np.testing.assert_array_equal(case.label, label)


def test_gap_in_slice_numbers_is_an_error(tmp_path: Path):
    write_ssl4mis(tmp_path, patients=(5,), volumes=False, slices_of=(5,), lists={"train": [5]})
    gone = tmp_path / "data" / "slices" / "patient005_frame01_slice_2.h5"
    gone.unlink()
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert str(gone) in str(err.value) and "missing" in str(err.value)


def test_lists_give_the_split_and_labeled_sets_follow_train_list_order(tmp_path: Path):
    write_ssl4mis(tmp_path, patients=range(1, 12), lists={"train": [9, 3, 5, 1, 7, 2, 8, 4], "val": [6], "test": [10, 11]})
    split = open_dataset(tmp_path).default_split
    assert split.train == ("patient009", "patient003", "patient005", "patient001", "patient007", "patient002",
                           "patient008", "patient004")
    assert split.val == ("patient006",) and split.test == ("patient010", "patient011")
    assert split.labeled("1") == ("patient009",)
    assert split.labeled("3") == ("patient009", "patient003", "patient005")
    assert split.labeled("7") == split.train[:7]


def test_lists_naming_missing_volumes_are_an_error(tmp_path: Path):
    write_ssl4mis(tmp_path, patients=(1, 2), lists={"train": [1, 2], "test": [3]})
    with pytest.raises(CaseError, match="patient003"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, use_lists=False).default_split is None


def test_spacing_option_fixed_or_per_case(tmp_path: Path):
    write_ssl4mis(tmp_path, patients=(1,), lists={"train": [1]})
    case = open_dataset(tmp_path, spacing=(10, 1.5, 1.5)).ref("patient001_frame01").load()
    assert case.spacing == (10.0, 1.5, 1.5)
    np.testing.assert_array_equal(np.diag(case.affine), [1.5, 1.5, 10.0, 1.0])
    per_case = {"patient001_frame01": (5, 1.25, 1.25)}
    ds = open_dataset(tmp_path, spacing=per_case)
    assert ds.ref("patient001_frame01").load().spacing == (5.0, 1.25, 1.25)
    with pytest.raises(CaseError, match="no spacing for case 'patient001_frame02'"):
        ds.ref("patient001_frame02").load()


def test_spacing_from_raw_acdc_takes_real_geometry(tmp_path: Path):
    shape = (4, 12, 10)
    write_ssl4mis(tmp_path / "ssl", patients=(3,), shape=shape, lists={"train": [3]})
    # ES before ED in frame numbers is rare but possible: SSL4MIS's frame01 is the lower number.
    write_acdc_raw(tmp_path / "raw", patients=(3,), frames={3: (14, 2)}, shape=shape, spacing=(9.0, 1.4, 1.4),
                   write_4d=False)
    ds = open_dataset(tmp_path / "ssl", spacing_from=tmp_path / "raw")
    case = ds.ref("patient003_frame01").load()
    assert case.spacing == pytest.approx((9.0, 1.4, 1.4))
    np.testing.assert_allclose(case.affine, affine_zyx((9.0, 1.4, 1.4), (-3, 6.0, 0.5)))
    assert case.header is not None
    es = tmp_path / "raw" / "training" / "patient003" / "patient003_frame14.nii.gz"
    es.unlink()
    ds.ref("patient003_frame01").load()
    with pytest.raises(CaseError, match="patient003_frame14.nii.gz"):
        ds.ref("patient003_frame02").load()


def test_spacing_from_raw_acdc_refuses_a_different_grid(tmp_path: Path):
    write_ssl4mis(tmp_path / "ssl", patients=(3,), shape=(4, 12, 10), lists={"train": [3]})
    write_acdc_raw(tmp_path / "raw", patients=(3,), shape=(5, 12, 10), write_4d=False)
    ds = open_dataset(tmp_path / "ssl", spacing_from=tmp_path / "raw")
    with pytest.raises(CaseError, match="patient003_frame01.nii.gz: shape"):
        ds.ref("patient003_frame01").load()


def test_opening_reads_no_h5_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_ssl4mis(tmp_path, patients=(1, 2), slices_of=(2,), lists={"train": [1, 2]})
    opened: list[str] = []
    real = h5py.File

    def counting(name, *args, **kwargs):
        opened.append(str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting)
    ds = open_dataset(tmp_path)
    assert len(ds) == 4 and opened == []
    ds.ref("patient001_frame02").load()
    assert [Path(f).name for f in opened] == ["patient001_frame02.h5"]
