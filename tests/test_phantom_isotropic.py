"""The procedural isotropic phantom: determinism, cubic voxels, three organs in a body, CT in
Hounsfield units or MR-like magnitudes, variation between patients, the nnU-Net folder it
writes (read back by ``open_dataset``) with its split, and ``cctr data phantom --kind isotropic``."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from cctr.joint.app.cli import main
from cctr.seg.data.phantom_isotropic import (
    ISOTROPIC_CLASSES, ORGANS, IsotropicPhantomConfig, make_patient, write_isotropic_phantom,
)
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import draw_split

TINY = IsotropicPhantomConfig(shape=(40, 44), spacing_mm=5.0)   # 200-220 mm a side, the whole body in view
SEED = 4


@pytest.fixture(scope="module")
def patients():
    return [make_patient(SEED, n) for n in (1, 2, 3)]


def test_same_seed_gives_byte_identical_volumes():
    a, b = make_patient(3, 2, TINY), make_patient(3, 2, TINY)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.spacing == b.spacing and np.array_equal(a.affine, b.affine)
    other = make_patient(4, 2, TINY)
    assert other.shape != a.shape or not np.array_equal(other.image, a.image)


def test_volumes_are_isotropic_ct_with_three_organs_in_a_body(patients):
    for case in patients:
        assert case.spacing == (2.0, 2.0, 2.0) and all(80 <= n <= 100 for n in case.shape)
        assert case.class_names == ISOTROPIC_CLASSES and set(np.unique(case.label)) == {0, 1, 2, 3}
        assert np.array_equal(case.image, np.rint(case.image))   # whole HU, as int16 stores them
        corners = case.image[:, [0, -1]][:, :, [0, -1]]
        assert np.median(corners) < -950   # air around the body
        for k, (_, _, hu, _) in enumerate(ORGANS, start=1):
            assert abs(np.median(case.image[case.label == k]) - hu) < 10
        sizes = np.bincount(case.label.ravel(), minlength=4)[1:]
        assert sizes[0] > 2 * max(sizes[1:])   # the liver is the large one


def test_organs_move_between_patients(patients):
    def centroids(case):
        centre = (np.asarray(case.shape) - 1) / 2.0
        return [(np.asarray(ndimage.center_of_mass(case.label == k)) - centre) * case.spacing for k in (1, 2, 3)]

    a, b, c = (centroids(p) for p in patients)
    for k in range(3):
        assert np.linalg.norm(a[k] - b[k]) > 2.0 and np.linalg.norm(a[k] - c[k]) > 2.0


def test_mr_magnitudes_are_non_negative_with_the_same_anatomy():
    ct, mr = make_patient(SEED, 1, TINY), make_patient(SEED, 1, replace(TINY, modality="MR"))
    assert np.array_equal(ct.label, mr.label)
    assert mr.image.min() >= 0 and np.median(mr.image[mr.label == 2]) > np.median(mr.image[mr.label == 1])


def test_config_rejects_bad_grids_and_modalities():
    for bad, message in (({"shape": (60, 50)}, "shape"), ({"shape": (8, 10)}, "shape"),
                         ({"spacing_mm": 0.0}, "spacing_mm"), ({"modality": "PET"}, "modality"),
                         ({"size_jitter": 1.0}, "size_jitter")):
        with pytest.raises(ValueError, match=message):
            IsotropicPhantomConfig(**bad)


def test_writes_the_nnunet_layout_read_back_voxel_for_voxel(tmp_path):
    out = write_isotropic_phantom(tmp_path / "iso", 4, seed=SEED, cfg=TINY, workers=2)
    ds = open_dataset(out)
    assert ds.layout == "nnunet" and ds.class_names == ISOTROPIC_CLASSES
    assert ds.case_ids == ds.patient_ids == ("iso001", "iso002", "iso003", "iso004")
    for n, ref in enumerate(ds.refs, start=1):
        made, case = make_patient(SEED, n, TINY), ref.load()
        assert np.array_equal(case.image, made.image) and np.array_equal(case.label, made.label)
        assert np.allclose(case.spacing, made.spacing)
    assert ds.default_split == draw_split(ds.patient_ids, SEED)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["cctr_phantom"]["kind"] == "isotropic" and meta["channel_names"] == {"0": "CT"}


def test_cli_writes_the_isotropic_phantom_and_refuses_the_abdomen_options(tmp_path, capsys):
    out = tmp_path / "iso"
    assert main(["data", "phantom", "--kind", "isotropic", "--out", str(out), "--patients", "3", "--seed", "2",
                 "--workers", "1"]) == 0
    assert "3 patients (3 volumes)" in capsys.readouterr().out
    ds = open_dataset(out)
    assert ds.class_names == ISOTROPIC_CLASSES and ds.ref("iso001").load().spacing == (2.0, 2.0, 2.0)
    assert np.array_equal(ds.ref("iso002").load().image, make_patient(2, 2).image)
    for extra in (["--layout", "synapse"], ["--full-size"]):
        assert main(["data", "phantom", "--kind", "isotropic", "--out", str(tmp_path / "bad"), "--patients", "3",
                     *extra]) == 2
        assert "--kind abdomen" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
