"""The procedural abdominal CT phantom: determinism, Synapse-like classes, sizes, HU and
spacing, anatomical placement, both layouts it writes (read back by ``open_dataset``,
training volumes rebuilt from slices), its split, and the ``cctr data phantom`` verb."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from cctr.joint.app.cli import main
from cctr.seg.data.case import CaseError
from cctr.seg.data.phantom_abdomen import (
    ABDOMEN_CLASSES, AORTA, GALLBLADDER, KIDNEY_L, KIDNEY_R, LIVER, PANCREAS, SPLEEN, STOMACH, AbdomenPhantomConfig,
    draw_anatomy, make_patient, patient_seeds, synapse_spacing, to_synapse_intensity, write_abdomen_phantom,
)
from cctr.seg.data.phantom_common import MARKER_FILE
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.readers.synapse import SYNAPSE_CLASSES
from cctr.seg.data.split import SPLIT_FILENAME, draw_split

# Small volumes for the tests of files and layouts (every organ is still present at 64 x 64).
TINY = AbdomenPhantomConfig(matrix=64, slice_spacing_mm=(7.0, 8.0))
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


def test_nine_synapse_classes_all_present_with_very_different_sizes(patients):
    assert ABDOMEN_CLASSES == SYNAPSE_CLASSES and len(ABDOMEN_CLASSES) == 9
    for case in patients:
        counts = np.bincount(case.label.ravel(), minlength=9)
        assert counts.size == 9 and (counts > 0).all(), (case.case_id, counts)
        organs = counts[1:]
        assert counts[LIVER] == organs.max()
        # Small structures next to a large one, as in Synapse.
        assert counts[LIVER] > 10 * counts[GALLBLADDER]
        assert counts[LIVER] > 5 * counts[AORTA]
        assert counts[LIVER] > 3 * counts[PANCREAS]


def test_intensities_are_hounsfield_like(patients):
    for case in patients:
        img, lab = case.image, case.label
        assert np.array_equal(img, np.rint(img)) and img.min() >= -1024 and img.max() <= 3071
        assert abs(np.median(img[:, :3, :3]) + 1000) < 60  # air in the corner

        def median(value: int) -> float:
            inner = ndimage.binary_erosion(lab == value, iterations=1)
            return float(np.median(img[inner if inner.any() else lab == value]))

        assert 40 < median(LIVER) < 110
        assert 30 < median(SPLEEN) < 80
        assert median(KIDNEY_L) > 90 and median(KIDNEY_R) > 90  # contrast
        assert median(AORTA) > 150
        assert -20 < median(GALLBLADDER) < 40  # bile
        body = (img > -500) & (lab == 0)
        assert np.mean((img[body] > -150) & (img[body] < -50)) > 0.1  # fat
        assert img.max() > 500  # bone


def test_spacing_and_grid_default_and_full_size():
    for n in range(1, 9):
        an = draw_anatomy(np.random.default_rng(patient_seeds(0, n)[0]), AbdomenPhantomConfig())
        sz, sy, sx = an.spacing
        assert an.shape[1:] == (128, 128) and sy == sx and 2.4 <= sy <= 3.5 and 4.0 <= sz <= 6.0
        full = draw_anatomy(np.random.default_rng(patient_seeds(0, n)[0]), AbdomenPhantomConfig.full_size())
        sz, sy, sx = full.spacing
        assert full.shape[1:] == (512, 512) and sy == sx and 0.6 <= sy <= 1.0 and 2.5 <= sz <= 5.0
        # The same field of view either way: the preset changes the grid, not the anatomy.
        assert abs(full.shape[1] * full.spacing[1] - an.shape[1] * an.spacing[1]) < 1e-6
        assert 40 <= full.shape[0] <= 130


def test_organs_sit_where_they_belong(patients):
    for case in patients:
        c = {v: np.array(ndimage.center_of_mass(case.label == v)) for v in range(1, 9)}  # (z, y, x)
        # Columns run towards the patient's left: liver and right kidney on the image's left.
        assert c[LIVER][2] < c[STOMACH][2] and c[LIVER][2] < c[SPLEEN][2]
        assert c[KIDNEY_R][2] < c[AORTA][2] < c[KIDNEY_L][2]
        # Rows run towards the back: kidneys and spleen behind the stomach; gallbladder below the liver's centre.
        assert c[KIDNEY_L][1] > c[STOMACH][1] and c[SPLEEN][1] > c[STOMACH][1]
        assert c[GALLBLADDER][0] > c[LIVER][0]
        # The aorta runs through (almost) every slice; the pancreas crosses in front of it.
        aorta_slices = (case.label == AORTA).any(axis=(1, 2))
        assert aorta_slices.mean() > 0.9
        xs = np.flatnonzero((case.label == PANCREAS).any(axis=(0, 1)))
        assert xs.min() < c[AORTA][2] < xs.max() and c[PANCREAS][1] < c[AORTA][1]


def test_anatomy_varies_between_patients(patients):
    fractions = np.array([np.bincount(p.label.ravel(), minlength=9) / p.label.size for p in patients])
    assert (fractions.std(axis=0)[1:] > 0).all()
    assert len({p.shape for p in patients}) > 1 or len({p.spacing for p in patients}) > 1


def test_config_rejects_inverted_ranges_and_tiny_grids():
    with pytest.raises(ValueError, match="fov_mm"):
        AbdomenPhantomConfig(fov_mm=(400.0, 300.0))
    with pytest.raises(ValueError, match="matrix"):
        replace(AbdomenPhantomConfig(), matrix=16)


@pytest.fixture(scope="module")
def nnunet_dir(tmp_path_factory):
    return write_abdomen_phantom(tmp_path_factory.mktemp("abd") / "nn", 4, seed=SEED, cfg=TINY, workers=1)


@pytest.fixture(scope="module")
def synapse_dir(tmp_path_factory):
    return write_abdomen_phantom(tmp_path_factory.mktemp("abd") / "syn", 5, seed=SEED, cfg=TINY, layout="synapse",
                                 workers=2)


def test_nnunet_layout_reads_back_voxel_for_voxel(nnunet_dir):
    ds = open_dataset(nnunet_dir)
    assert ds.layout == "nnunet" and ds.class_names == ABDOMEN_CLASSES
    assert ds.case_ids == ds.patient_ids == ("case0001", "case0002", "case0003", "case0004")
    for n, ref in enumerate(ds.refs, start=1):
        made, case = make_patient(SEED, n, TINY), ref.load()
        assert np.array_equal(case.image, made.image) and np.array_equal(case.label, made.label)
        assert np.allclose(case.spacing, made.spacing, atol=1e-4)
    split = ds.default_split
    assert split == draw_split(ds.patient_ids, SEED)
    assert len(ds.of_patients(split.labeled("1"))) == 1
    meta = json.loads((nnunet_dir / "dataset.json").read_text())
    assert meta["cctr_phantom"]["kind"] == "abdomen" and meta["channel_names"] == {"0": "CT"}


def test_synapse_layout_rebuilds_training_volumes_from_slices(synapse_dir):
    ds = open_dataset(synapse_dir)
    split = ds.default_split
    assert ds.layout == "synapse" and ds.class_names == SYNAPSE_CLASSES
    assert split == draw_split(ds.patient_ids, SEED)  # split.json, the same as the nnU-Net layout's
    subsets = {r.case_id: r.meta["subset"] for r in ds.refs}
    assert {c for c, s in subsets.items() if s == "test_vol_h5"} == set(split.test)
    assert {c for c, s in subsets.items() if s == "train_npz"} == set(split.train) | set(split.val)
    spacing = synapse_spacing(synapse_dir)
    with_mm = open_dataset(synapse_dir, spacing=spacing)
    for n, ref in enumerate(with_mm.refs, start=1):
        made, case = make_patient(SEED, n, TINY), ref.load()
        if subsets[case.case_id] == "train_npz":
            slices = sorted((synapse_dir / "train_npz").glob(f"{case.case_id}_slice*.npz"))
            assert len(slices) == made.shape[0]
            with np.load(slices[0]) as first:
                assert set(first.files) == {"image", "label"} and first["image"].shape == made.shape[1:]
        assert np.array_equal(case.image, to_synapse_intensity(made.image))
        assert 0.0 <= case.image.min() and case.image.max() <= 1.0
        assert np.array_equal(case.label, made.label)
        assert case.spacing == pytest.approx(made.spacing)


def test_synapse_lists_alone_give_the_release_split(synapse_dir, tmp_path):
    lists = synapse_dir / "lists" / "lists_Synapse"
    split = open_dataset(synapse_dir).default_split
    train_lines = (lists / "train.txt").read_text().split()
    assert len(train_lines) == sum(make_patient(SEED, int(c[4:]), TINY).shape[0] for c in split.train)
    # Without split.json the reader falls back on the lists: same train (in order) and test.
    copy = tmp_path / "syn"
    copy.mkdir()
    for entry in synapse_dir.iterdir():
        if entry.name != SPLIT_FILENAME:
            (copy / entry.name).symlink_to(entry)
    from_lists = open_dataset(copy).default_split
    assert from_lists.train == split.train and from_lists.test == split.test and from_lists.val == ()
    assert from_lists.labeled("1") == split.labeled("1")


def test_refuses_a_foreign_folder_and_replaces_any_phantom(tmp_path, nnunet_dir):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(CaseError, match="not a phantom folder"):
        write_abdomen_phantom(foreign, 3, cfg=TINY, workers=1)
    out = tmp_path / "ph"
    write_abdomen_phantom(out, 3, cfg=TINY, workers=1)
    write_abdomen_phantom(out, 3, cfg=TINY, layout="synapse", workers=1)  # a phantom folder: replaced
    assert (out / MARKER_FILE).is_file() and not (out / "dataset.json").exists()
    assert open_dataset(out).layout == "synapse"
    write_abdomen_phantom(out, 3, cfg=TINY, workers=1)  # and back: the marker says it is ours
    assert open_dataset(out).layout == "nnunet"
    with pytest.raises(ValueError, match="layout"):
        write_abdomen_phantom(tmp_path / "x", 3, cfg=TINY, layout="acdc")


def test_cli_writes_both_layouts_and_keeps_the_cardiac_default(tmp_path, capsys):
    out = tmp_path / "abd"
    assert main(["data", "phantom", "--kind", "abdomen", "--out", str(out), "--patients", "3", "--workers", "1"]) == 0
    assert "3 patients (3 volumes)" in capsys.readouterr().out
    assert open_dataset(out).layout == "nnunet" and open_dataset(out).class_names == ABDOMEN_CLASSES
    syn = tmp_path / "syn"
    assert main(["data", "phantom", "--kind", "abdomen", "--layout", "synapse", "--out", str(syn),
                 "--patients", "3", "--seed", "2", "--workers", "1"]) == 0
    ds = open_dataset(syn)
    assert ds.layout == "synapse" and len(ds) == 3 and ds.ref("case0001").load().shape[1:] == (128, 128)
    png = tmp_path / "syn.png"
    assert main(["data", "show", str(syn), "--out", str(png), "--cases", "2", "--slices", "3"]) == 0
    assert png.stat().st_size > 1000
    card = tmp_path / "card"
    assert main(["data", "phantom", "--out", str(card), "--patients", "3", "--workers", "1"]) == 0
    assert open_dataset(card).class_names == ("background", "RV", "MYO", "LV")
    capsys.readouterr()
    assert main(["data", "phantom", "--out", str(tmp_path / "bad"), "--patients", "3", "--layout", "synapse"]) == 2
    assert "--kind abdomen" in capsys.readouterr().err
