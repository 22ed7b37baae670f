"""The procedural cardiac phantom: determinism, ACDC-like ranges and anatomy, and the folder it writes."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from cctr.seg.data.case import CaseError
from cctr.seg.data.nifti import read_nifti
from cctr.seg.data.phantom import PhantomConfig, make_patient, write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import draw_split, load_split

RV, MYO, LV = 1, 2, 3
# Small volumes for the tests that only check files and geometry, not anatomy.
TINY = PhantomConfig(matrix=(32, 40), slices=(8, 9))
# Stacks that always reach past the apex, for the tests that look at the apex.
FULL = PhantomConfig(slice_spacing_mm=(8.0, 10.0), coverage=(1.08, 1.1), base_offset=(0.0, 0.02))


@pytest.fixture(scope="module")
def patients():
    return [make_patient(7, n) for n in (1, 2, 3)]


def test_same_seed_gives_byte_identical_arrays():
    ed1, es1 = make_patient(3, 2)
    ed2, es2 = make_patient(3, 2)
    for a, b in ((ed1, ed2), (es1, es2)):
        assert a.image.tobytes() == b.image.tobytes()
        assert a.label.tobytes() == b.label.tobytes()
        assert a.spacing == b.spacing and np.array_equal(a.affine, b.affine)
    other, _ = make_patient(4, 2)
    assert other.image.shape != ed1.image.shape or not np.array_equal(other.image, ed1.image)


def test_patient_does_not_depend_on_how_many_are_made():
    alone, _ = make_patient(5, 3, TINY, patients=3)
    among_many, _ = make_patient(5, 3, TINY, patients=40)
    assert alone.case_id == among_many.case_id == "patient003_ED"
    assert alone.image.tobytes() == among_many.image.tobytes()
    assert alone.label.tobytes() == among_many.label.tobytes()


def test_volumes_are_acdc_like(patients):
    cfg = PhantomConfig()
    for ed, es in patients:
        assert ed.patient_id == es.patient_id and (ed.case_id, es.case_id) == (f"{ed.patient_id}_ED", f"{ed.patient_id}_ES")
        assert ed.shape == es.shape and ed.spacing == es.spacing and np.array_equal(ed.affine, es.affine)
        z, y, x = ed.shape
        assert cfg.slices[0] <= z <= cfg.slices[1]
        assert cfg.matrix[0] <= y <= cfg.matrix[1] and cfg.matrix[0] <= x <= cfg.matrix[1]
        sz, sy, sx = ed.spacing
        assert 5.0 <= sz <= 10.0 and 1.2 <= sy <= 1.8 and 1.2 <= sx <= 1.8
        assert np.allclose(np.diag(ed.affine)[:3], (sx, sy, sz)) and np.count_nonzero(ed.affine[:3, :3]) == 3
        assert ed.class_names == ("background", "RV", "MYO", "LV")
        for case in (ed, es):
            assert case.image.dtype == np.float32 and case.image.min() >= 0 and np.isfinite(case.image).all()
            assert set(np.unique(case.label)) == {0, RV, MYO, LV}


def test_blood_is_bright_and_myocardium_dark(patients):
    for case in (c for pair in patients for c in pair):
        img, lab = case.image, case.label
        blood_lv, blood_rv, myo = (float(np.median(img[lab == k])) for k in (LV, RV, MYO))
        assert blood_lv > 1.8 * myo and blood_rv > 1.8 * myo
        # Lungs (and air, where the body does not fill the field of view) are dark.
        assert np.percentile(img, 5) < 0.15 * blood_lv


def test_rv_crescent_sits_on_the_septum_and_ends_before_the_apex():
    for number in (1, 2, 3):
        ed, _ = make_patient(8, number, FULL)
        lab = ed.label
        rv_grown = ndimage.binary_dilation(lab == RV, structure=np.ones((1, 3, 3), bool))
        assert (rv_grown & (lab == MYO)).any(), "RV touches the septum"
        assert not (rv_grown & (lab == LV)).any(), "the septum separates RV and LV cavities"
        rows = lambda k: np.flatnonzero((lab == k).any(axis=(1, 2)))  # noqa: E731
        assert rows(RV).max() < rows(MYO).max(), "the RV ends before the LV towards the apex"
        lv_area = (lab == LV).sum(axis=(1, 2))
        first, last = rows(LV)[0], rows(LV)[-1]
        assert lv_area[last] < lv_area[first], "the LV tapers towards the apex"


def test_end_systole_has_smaller_cavities_and_keeps_myocardium(patients):
    for ed, es in patients:
        vol = lambda c, k: int((c.label == k).sum())  # noqa: E731
        assert vol(es, LV) < 0.8 * vol(ed, LV)
        assert vol(es, RV) < 0.9 * vol(ed, RV)
        assert 0.7 < vol(es, MYO) / vol(ed, MYO) < 1.4


def test_anatomy_varies_between_patients(patients):
    lv_volumes = [float((ed.label == LV).sum() * np.prod(ed.spacing)) for ed, _ in patients]
    assert len({round(v) for v in lv_volumes}) == len(lv_volumes)
    centres = [ndimage.center_of_mass(ed.label == LV)[1:] for ed, _ in patients]
    assert len({tuple(np.round(c)) for c in centres}) == len(centres)


def test_config_rejects_inverted_ranges():
    with pytest.raises(ValueError, match="wall_mm"):
        replace(PhantomConfig(), wall_mm=(12.0, 6.0))


def test_writes_the_nnunet_layout_with_patients_and_split(tmp_path):
    out = write_phantom(tmp_path / "ph", patients=3, seed=9, workers=2)  # worker processes, same arrays
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".nii.gz" and meta["channel_names"] == {"0": "cineMRI"}
    assert meta["patient_of"]["patient002_ES"] == "patient002"
    pids = [f"patient00{i}" for i in (1, 2, 3)]
    assert load_split(out / "split.json") == draw_split(pids, 9)
    ed, es = make_patient(9, 2)
    image, spacing, affine, _ = read_nifti(out / "imagesTr" / "patient002_ES_0000.nii.gz")
    label, _, label_affine, _ = read_nifti(out / "labelsTr" / "patient002_ES.nii.gz")
    assert np.array_equal(image, es.image) and np.array_equal(label, es.label)
    assert np.allclose(spacing, es.spacing) and np.allclose(affine, es.affine) and np.allclose(label_affine, es.affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"], "no temporary folder left behind"


def test_hundred_volumes_load_back_with_their_spacing_and_affine(tmp_path):
    out = write_phantom(tmp_path / "ph", patients=50, seed=2, cfg=TINY, workers=1)
    dataset = open_dataset(out)
    assert dataset.layout == "nnunet" and len(dataset.refs) == 100 and len(dataset.patient_ids) == 50
    assert dataset.default_split is not None and len(dataset.default_split.train) == 35
    for number in range(1, 51):
        for expected in make_patient(2, number, TINY, patients=50):
            case = dataset.ref(expected.case_id).load()
            assert case.patient_id == expected.patient_id
            assert np.allclose(case.spacing, expected.spacing, rtol=1e-6)
            assert np.allclose(case.affine, expected.affine, atol=1e-4)
            assert np.array_equal(case.label, expected.label)


def test_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CaseError, match="not empty"):
        write_phantom(foreign, patients=3, cfg=TINY, workers=1)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    own = write_phantom(tmp_path / "ph", patients=3, seed=1, cfg=TINY, workers=1)
    write_phantom(own, patients=4, seed=1, cfg=TINY, workers=1)
    assert json.loads((own / "dataset.json").read_text())["numTraining"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ph"]


def test_a_phantom_folder_with_files_no_phantom_wrote_is_replaced_only_with_overwrite(tmp_path):
    own = write_phantom(tmp_path / "ph", patients=3, seed=1, cfg=TINY, workers=1)
    (own / "cctr_plan.json").write_text("{}")             # derived from the data: replaced with it
    write_phantom(own, patients=3, seed=2, cfg=TINY, workers=1)
    (own / "notes.txt").write_text("mine")
    (own / "imagesUnlabeled").mkdir()
    (own / "imagesUnlabeled" / "u1_0000.nii.gz").write_bytes(b"scan")
    (own / "pred").mkdir()                                # an empty folder of the user's counts too
    with pytest.raises(CaseError, match=r"would delete 3 file\(s\) and folder\(s\) that cctr did not write there "
                                        r"\(imagesUnlabeled/, notes.txt, pred/\); pass --overwrite"):
        write_phantom(own, patients=4, seed=1, cfg=TINY, workers=1)
    assert (own / "notes.txt").read_text() == "mine" and (own / "imagesUnlabeled" / "u1_0000.nii.gz").is_file()
    write_phantom(own, patients=4, seed=1, cfg=TINY, workers=1, overwrite=True)
    assert not (own / "notes.txt").exists() and not (own / "imagesUnlabeled").exists()
    assert json.loads((own / "dataset.json").read_text())["numTraining"] == 8


def test_needs_three_patients_for_a_split(tmp_path):
    with pytest.raises(CaseError, match="at least 3 patients"):
        write_phantom(tmp_path / "ph", patients=2, workers=1)
    assert not (tmp_path / "ph").exists()
