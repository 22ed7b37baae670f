"""Every volume is read in one canonical orientation and predictions go back in the input's own:
a scan stored x-flipped, or with its axes permuted, under an affine that says so, reads as
the same array and gets the same labels in world space; a far more oblique scan than any
training volume is warned about; a constant image gets a warning and background."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff

from cctr.joint.app.cli import main
from cctr.seg.data.nifti import load_nifti_case, read_nifti
from cctr.seg.data.orientation import obliquity_deg
from cctr.seg.inference import TrainedStudents
from test_predict_reliability import CLASSES, _checkpoint
from cctr.seg.geometry_check import geometry_stats

SHAPE_XYZ, ZOOMS_XYZ = (48, 40, 4), (1.5, 1.5, 8.0)
STORAGES = {
    "canonical": np.array([[0, 1], [1, 1], [2, 1]]),
    "x_flipped": np.array([[0, -1], [1, 1], [2, 1]]),
    "permuted": np.array([[1, 1], [0, -1], [2, -1]]),   # x and y swapped, y and z flipped
}


def _affine() -> np.ndarray:
    affine = np.diag([*ZOOMS_XYZ, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 4.0)
    return affine


def _scan() -> tuple[np.ndarray, np.ndarray]:
    """A canonical image and label ``(X, Y, Z)`` with no symmetry along any axis."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE_XYZ), indexing="ij")
    label = ((x - 14) ** 2 + (y - 12) ** 2 < 60).astype(np.uint8) + 2 * (x > 36) * (y < 9) * (z > 0)
    image = (100.0 * label + x + 2 * y + 5 * z).astype(np.float32)
    return image, label.astype(np.uint8)


def _store(folder: Path, name: str, array_xyz: np.ndarray, ornt: np.ndarray) -> Path:
    """``array_xyz`` of the canonical grid saved in the storage ``ornt`` of the same world grid."""
    path = folder / f"{name}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = apply_orientation(array_xyz, ornt)
    nib.save(nib.Nifti1Image(data, _affine() @ inv_ornt_aff(ornt, SHAPE_XYZ)), str(path))
    return path


def test_flipped_and_permuted_storage_read_as_the_same_case(tmp_path):
    image, label = _scan()
    cases = {}
    for name, ornt in STORAGES.items():
        img = _store(tmp_path / "images", name, image, ornt)
        lab = _store(tmp_path / "labels", name, label, ornt)
        cases[name] = load_nifti_case(name, name, img, lab, CLASSES[:3])
    ref = cases["canonical"]
    assert ref.image.shape == SHAPE_XYZ[::-1] and ref.spacing == ZOOMS_XYZ[::-1]   # (Z, Y, X) and (z, y, x) mm
    for case in cases.values():
        np.testing.assert_array_equal(case.image, ref.image)
        np.testing.assert_array_equal(case.label, ref.label)
        assert case.spacing == ref.spacing
        np.testing.assert_allclose(case.affine, ref.affine, atol=1e-6)


def test_predict_gives_the_same_labels_in_world_space_whatever_the_storage(tmp_path, monkeypatch):
    # a student that answers by array position: any reading in the file's own storage shows
    def by_position(self, image_zyx, student="a"):
        out = np.zeros(image_zyx.shape, np.uint8)
        out[:, :, : image_zyx.shape[2] // 3] = 1
        out[:, : image_zyx.shape[1] // 4, :] = 2
        out[0] = 3
        return out

    monkeypatch.setattr(TrainedStudents, "predict", by_position)
    ckpt = _checkpoint(tmp_path / "best.pt", None)
    image, _ = _scan()
    inputs = {name: _store(tmp_path / "in", name, image, ornt) for name, ornt in STORAGES.items()}
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    world = {}
    for name, source in inputs.items():
        src, got = nib.load(str(source)), nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert got.shape == src.shape                              # the input's own storage ...
        np.testing.assert_array_equal(got.affine, src.affine)     # ... and affine
        world[name] = np.asarray(nib.as_closest_canonical(got).dataobj)
    assert set(np.unique(world["canonical"])) == {0, 1, 2, 3}
    for name in STORAGES:
        np.testing.assert_array_equal(world[name], world["canonical"], err_msg=name)


def test_a_scan_far_more_oblique_than_training_is_warned_about(tmp_path, capsys):
    stats = geometry_stats([ZOOMS_XYZ[::-1]], [SHAPE_XYZ[::-1]])
    ckpt = _checkpoint(tmp_path / "best.pt", {**stats, "oblique_deg_max": 0.0})
    image, _ = _scan()
    turn = np.radians(40.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0, 0], [np.sin(turn), np.cos(turn), 0, 0], [0, 0, 1, 0],
                         [0, 0, 0, 1]])
    oblique = rotation @ _affine()
    assert obliquity_deg(oblique) == pytest.approx(40.0) and obliquity_deg(_affine()) == 0.0
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(image, oblique), str(tmp_path / "in" / "oblique.nii.gz"))
    nib.save(nib.Nifti1Image(image, _affine()), str(tmp_path / "in" / "straight.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(tmp_path / "in"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "oblique.nii.gz: its axes are turned 40 degrees from the nearest world axes" in err
    assert "straight.nii.gz" not in err
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "o2"),
                 "--strict-geometry"]) == 2


def test_a_constant_image_is_background_with_a_warning(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "best.pt", None)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.full(SHAPE_XYZ, 7.0, np.float32), _affine()), str(tmp_path / "in" / "flat.nii.gz"))
    assert main(["predict", "--ckpt", str(ckpt), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert "flat.nii.gz: every voxel is 7: nothing to segment" in capsys.readouterr().err
    assert not np.asarray(nib.load(str(tmp_path / "out" / "flat.nii.gz")).dataobj).any()
    assert read_nifti(tmp_path / "out" / "flat.nii.gz")[0].shape == SHAPE_XYZ[::-1]
