"""``cctr data phantom|show|summary|split`` and the montage they draw, end to end on small folders."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.seg.data.case import Case, CaseRef, spacing_affine
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.montage import pick_slices, write_montage
from cctr.seg.overlay import class_colors, overlay
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import draw_split, load_split


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "phantom"
    assert main(["data", "phantom", "--out", str(out), "--patients", "3", "--seed", "4", "--workers", "1"]) == 0
    return out


def test_phantom_writes_a_folder_the_reader_loads(phantom_dir):
    dataset = open_dataset(phantom_dir)
    assert dataset.layout == "nnunet"
    assert dataset.case_ids == tuple(f"patient00{i}_{f}" for i in (1, 2, 3) for f in ("ED", "ES"))
    assert dataset.patient_ids == ("patient001", "patient002", "patient003")
    case = dataset.ref("patient003_ES").load()
    sz, sy, sx = case.spacing
    assert 5 <= sz <= 10 and np.allclose(np.diag(case.affine)[:3], (sx, sy, sz), rtol=1e-6)
    assert dataset.default_split == draw_split(dataset.patient_ids, 4)


def test_summary_reports_counts_ranges_fractions_and_split(phantom_dir, capsys):
    assert main(["data", "summary", str(phantom_dir)]) == 0
    text = capsys.readouterr().out
    assert "layout:   nnunet" in text
    assert "cases:    6 (6 labeled, 0 unlabeled)" in text
    assert "patients: 3" in text
    assert "classes:  0 background, 1 RV, 2 MYO, 3 LV" in text
    spacing_line = next(ln for ln in text.splitlines() if ln.startswith("spacing (z, y, x) mm:"))
    z_range = spacing_line.split(":")[1].split(" x ")[0].strip()
    assert all(5.0 <= float(v) <= 10.0 for v in z_range.split("-"))
    fractions = [float(tok.rstrip("%,")) for tok in text.split("fractions (labeled cases):")[1].split("\n")[0].split()[1::2]]
    assert len(fractions) == 4 and abs(sum(fractions) - 100) < 0.05 and fractions[0] > 80
    assert "split:    train 1, val 1, test 1 patients" in text


def test_show_writes_a_montage_of_the_asked_size(phantom_dir, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["data", "show", str(phantom_dir), "--out", str(out), "--cases", "2", "--slices", "3"]) == 0
    assert str(out) in capsys.readouterr().out
    pixels = mpimg.imread(out)
    assert pixels.shape[1] == 3 * 220 and pixels.shape[0] == 2 * 220 + 40
    rgb = pixels[..., :3]
    assert (np.abs(rgb - class_colors(4)[2]).sum(axis=2) < 0.02).any(), "myocardium outline drawn in its colour"


def test_split_draws_and_saves_a_seeded_split(phantom_dir, tmp_path):
    out = tmp_path / "s.json"
    assert main(["data", "split", str(phantom_dir), "--seed", "11", "--out", str(out), "--labeled", "1"]) == 0
    split = load_split(out)
    assert split == draw_split(("patient001", "patient002", "patient003"), 11, labeled_sizes=(1,))
    assert set(split.train + split.val + split.test) == {"patient001", "patient002", "patient003"}


def test_bad_folders_and_arguments_fail_cleanly(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "summary", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err

    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "a.txt").write_text("x")
    assert main(["data", "phantom", "--out", str(keep), "--patients", "3", "--workers", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["a.txt"]

    with pytest.raises(SystemExit) as exc:
        main(["data", "phantom", "--out", str(tmp_path / "x"), "--patients", "0"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _case(case_id: str, label: bool, num_classes: int) -> Case:
    rng = np.random.default_rng(len(case_id))
    lab = np.zeros((5, 20, 24), dtype=np.uint8)
    lab[1:4, 5:15, 6:12] = 1
    lab[2:4, 8:12, 14:20] = num_classes - 1
    return Case(case_id=case_id, patient_id=case_id, image=rng.random((5, 20, 24), dtype=np.float32),
                label=lab if label else None, spacing=(5.0, 1.0, 2.0), affine=spacing_affine((5.0, 1.0, 2.0)),
                sources=(), class_names=tuple(f"c{i}" for i in range(num_classes)))


def test_montage_shows_any_dataset_including_unlabeled_and_many_classes(tmp_path):
    cases = [_case("a", True, 9), _case("b", False, 9)]
    refs = tuple(CaseRef(c.case_id, c.patient_id, c.label is not None, partial(lambda c: c, c)) for c in cases)
    dataset = Dataset(layout="synapse", root=tmp_path / "ds", refs=refs, class_names=cases[0].class_names)
    out = write_montage(dataset, tmp_path / "m.png", case_ids=("a", "b"), slices=2)
    assert mpimg.imread(out).shape[:2] == (2 * 220 + 40, 2 * 220)
    assert pick_slices(cases[0], 10).tolist() == [1, 2, 3], "labeled: only slices with foreground"
    assert pick_slices(cases[1], 2).tolist() == [0, 4], "unlabeled: the whole stack"


def test_overlay_outlines_classes_and_leaves_background_grey():
    image = np.linspace(0, 1, 8 * 8, dtype=np.float32).reshape(8, 8)
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:6, 2:6] = 1
    colors = class_colors(2)
    rgb = overlay(image, label, colors, (0.0, 1.0))
    assert np.allclose(rgb[0, 0], image[0, 0]) and np.allclose(rgb[7, 7], image[7, 7])
    assert np.allclose(rgb[2, 3], colors[1]), "outline pixel in full colour"
    assert not np.allclose(rgb[3, 3], colors[1]) and not np.allclose(rgb[3, 3], image[3, 3]), "fill is translucent"
    assert np.allclose(overlay(image, None, colors, (0.0, 1.0))[..., 0], image)


def test_split_writes_the_published_acdc_split_and_refuses_a_folder_without_its_patients(tmp_path, capsys):
    from layouts import write_acdc_raw
    from cctr.seg.data.known_splits import ACDC_SPLIT

    root = tmp_path / "acdc"
    write_acdc_raw(root, patients=range(1, 101), shape=(2, 4, 4), write_4d=False)
    out = tmp_path / "acdc_split.json"
    assert main(["data", "split", str(root), "--known", "acdc", "--out", str(out)]) == 0
    split = load_split(out)
    assert split == ACDC_SPLIT
    assert split.labeled("3") == ("patient099", "patient038", "patient050")

    few = tmp_path / "few"
    write_acdc_raw(few, patients=(1, 2), shape=(2, 4, 4), write_4d=False)
    assert main(["data", "split", str(few), "--known", "acdc", "--out", str(tmp_path / "no.json")]) == 2
    assert "not in the dataset" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()
    assert main(["data", "split", str(few)]) == 2
    assert "exactly one of --seed" in capsys.readouterr().err
