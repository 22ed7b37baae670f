"""TransUNet Synapse reader: slices stacked back into volumes, test volumes, key variants, lists,
class order, and opening a large slice folder by names alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layouts import write_synapse
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.readers.synapse import SYNAPSE_CLASSES


@pytest.mark.parametrize("image_key", ["image", "img"])
def test_train_slices_and_test_volumes_load_as_written(tmp_path: Path, image_key: str):
    written = write_synapse(tmp_path, train_cases=(7, 5), test_cases=(2,), n_slices=12, image_key=image_key)
    ds = open_dataset(tmp_path)
    assert ds.layout == "synapse" and ds.case_ids == ("case0002", "case0005", "case0007")
    assert ds.patient_ids == ds.case_ids
    for ref in ds.refs:
        case = ref.load()
        image, label = written.volumes[ref.case_id]
        assert case.shape == (12, 12, 10)
        np.testing.assert_array_equal(case.image, image)
        np.testing.assert_array_equal(case.label, label)
        assert case.spacing == (1.0, 1.0, 1.0)
    assert ds.ref("case0002").meta["subset"] == "test_vol_h5"


def test_class_order_is_btcv_order_and_overridable(tmp_path: Path):
    write_synapse(tmp_path)
    assert open_dataset(tmp_path).class_names == SYNAPSE_CLASSES
    assert SYNAPSE_CLASSES[1] == "spleen" and SYNAPSE_CLASSES[7] == "aorta" and len(SYNAPSE_CLASSES) == 9
    names = ("background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach")
    ds = open_dataset(tmp_path, class_names=names)
    assert ds.ref("case0005").load().class_names == names


def test_lists_give_the_split_with_labeled_sets_from_train_order(tmp_path: Path):
    write_synapse(tmp_path, train_cases=(31, 7, 9, 5, 26), test_cases=(8, 1), n_slices=2)
    split = open_dataset(tmp_path).default_split
    assert split.train == ("case0031", "case0007", "case0009", "case0005", "case0026")
    assert split.val == () and split.test == ("case0008", "case0001")
    assert split.labeled("1") == ("case0031",)
    assert split.labeled("2") == ("case0031", "case0007")
    assert split.labeled("4") == ("case0031", "case0007", "case0009", "case0005")


def test_lists_dir_option_and_no_lists(tmp_path: Path):
    write_synapse(tmp_path / "data", train_cases=(5, 6), test_cases=(1,), lists_dir=None)
    assert open_dataset(tmp_path / "data").default_split is None
    write_synapse(tmp_path / "elsewhere", train_cases=(6, 5), test_cases=(1,))
    ds = open_dataset(tmp_path / "data", lists_dir=tmp_path / "elsewhere" / "lists" / "lists_Synapse")
    assert ds.default_split.train == ("case0006", "case0005")


def test_gap_in_slices_is_an_error(tmp_path: Path):
    write_synapse(tmp_path, train_cases=(5,), test_cases=(), n_slices=4)
    gone = tmp_path / "train_npz" / "case0005_slice002.npz"
    gone.unlink()
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path)
    assert str(gone) in str(err.value)


def test_slice_without_image_key_names_file_and_keys(tmp_path: Path):
    write_synapse(tmp_path, train_cases=(5,), test_cases=(), n_slices=2)
    bad = tmp_path / "train_npz" / "case0005_slice001.npz"
    np.savez(bad, picture=np.zeros((12, 10), np.float32), label=np.zeros((12, 10), np.float32))
    with pytest.raises(CaseError) as err:
        open_dataset(tmp_path).ref("case0005").load()
    assert str(bad) in str(err.value) and "'image' or 'img'" in str(err.value) and "picture" in str(err.value)


def test_thousand_slice_files_are_indexed_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    train = tmp_path / "train_npz"
    train.mkdir()
    for case in range(10):
        for z in range(100):
            (train / f"case{case:04d}_slice{z:03d}.npz").touch()  # empty: any read would fail
    reads: list[str] = []
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(str(a[0])))
    ds = open_dataset(tmp_path)
    assert len(ds) == 10 and reads == []
    assert ds.refs[0].sources == (train / "case0000_slice*.npz",)
