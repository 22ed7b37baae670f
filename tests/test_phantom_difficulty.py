"""Phantom difficulty levels: level 1 is the default phantom, levels 2 and 3 widen how subjects
differ (every class still present), an unknown level is refused, and ``cctr data phantom
--difficulty`` writes the level's phantom (cardiac and abdomen only)."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from cctr.joint.app.cli import main
from cctr.seg.data.phantom import PhantomConfig, make_patient, write_phantom
from cctr.seg.data.phantom_abdomen import AbdomenPhantomConfig
from cctr.seg.data.phantom_abdomen import make_patient as make_abdomen
from cctr.seg.data.phantom_common import LEVELS, check_level
from cctr.seg.data.readers import open_dataset

# every organ is present at 64 x 64 (tests/test_phantom_abdomen.py)
SMALL_ABDOMEN = AbdomenPhantomConfig(matrix=64, slice_spacing_mm=(7.0, 8.0))


def _changed(a, b) -> dict[str, tuple]:
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}


def _spread(value) -> float:
    """How much a field lets subjects differ: a range's width, a scalar's size."""
    return value[1] - value[0] if isinstance(value, tuple) else float(value)


def test_level_1_is_the_default_phantom():
    assert LEVELS == (1, 2, 3)
    assert PhantomConfig.at_level(1) == PhantomConfig()
    assert AbdomenPhantomConfig().at_level(1) == AbdomenPhantomConfig()
    assert SMALL_ABDOMEN.at_level(1) == SMALL_ABDOMEN


@pytest.mark.parametrize("configs", [
    [PhantomConfig.at_level(n) for n in LEVELS],
    [AbdomenPhantomConfig().at_level(n) for n in LEVELS],
], ids=["cardiac", "abdomen"])
def test_higher_levels_widen_how_subjects_differ(configs):
    one, two, three = configs
    assert _changed(one, two) and _changed(two, three) and two != one and three != two
    assert set(_changed(one, two)) == set(_changed(one, three))
    for name, (low, high) in _changed(one, three).items():
        middle = getattr(two, name)
        assert _spread(low) < _spread(middle) < _spread(high), name


def test_abdominal_levels_keep_the_grid():
    full = AbdomenPhantomConfig.full_size()
    for level in LEVELS:
        hard = full.at_level(level)
        assert (hard.matrix, hard.slice_spacing_mm, hard.coverage_mm) == (full.matrix, full.slice_spacing_mm,
                                                                          full.coverage_mm)
        assert SMALL_ABDOMEN.at_level(level).matrix == 64


@pytest.mark.parametrize("level", [0, 4, -1, "2"])
def test_an_unknown_level_is_refused(level):
    with pytest.raises(ValueError, match="difficulty"):
        check_level(level)
    with pytest.raises(ValueError, match="difficulty"):
        PhantomConfig.at_level(level)
    with pytest.raises(ValueError, match="difficulty"):
        AbdomenPhantomConfig().at_level(level)


@pytest.mark.parametrize("level", [2, 3])
def test_cardiac_levels_keep_every_class_in_every_volume_and_change_the_subjects(level):
    cfg = PhantomConfig.at_level(level)
    for number in (1, 2, 3):
        ed, es = make_patient(0, number, cfg)
        for case in (ed, es):
            assert (np.bincount(case.label.ravel(), minlength=4) > 0).all(), (level, case.case_id)
        easy, _ = make_patient(0, number, PhantomConfig())
        assert easy.shape != ed.shape or not np.array_equal(easy.label, ed.label)


@pytest.mark.parametrize("level", [2, 3])
def test_abdominal_levels_keep_every_organ_in_every_volume_and_change_the_subjects(level):
    cfg = SMALL_ABDOMEN.at_level(level)
    for number in (1, 2, 3):
        case = make_abdomen(0, number, cfg)
        assert (np.bincount(case.label.ravel(), minlength=9) > 0).all(), (level, case.case_id)
        easy = make_abdomen(0, number, SMALL_ABDOMEN)
        assert easy.shape != case.shape or not np.array_equal(easy.label, case.label)


def test_cli_phantom_difficulty(tmp_path, capsys):
    out = tmp_path / "hard"
    assert main(["data", "phantom", "--out", str(out), "--patients", "3", "--kind", "cardiac", "--difficulty", "3",
                 "--workers", "1"]) == 0
    dataset = open_dataset(out)
    first = next(ref for ref in dataset.refs if ref.case_id.endswith("_ED")).load()
    expected, _ = make_patient(0, 1, PhantomConfig.at_level(3), patients=3)
    assert first.case_id == expected.case_id
    assert np.array_equal(first.label, expected.label) and np.allclose(first.image, expected.image)
    # the same command without --difficulty is level 1, another phantom
    easy = tmp_path / "easy"
    write_phantom(easy, 3, seed=0, workers=1)
    easy_first = next(ref for ref in open_dataset(easy).refs if ref.case_id == first.case_id).load()
    assert easy_first.shape != first.shape or not np.array_equal(easy_first.label, first.label)
    capsys.readouterr()

    assert main(["data", "phantom", "--out", str(tmp_path / "iso"), "--patients", "3", "--kind", "isotropic",
                 "--difficulty", "2", "--workers", "1"]) == 2
    assert "--difficulty is for --kind cardiac and abdomen" in capsys.readouterr().err
    assert not (tmp_path / "iso").exists()
    with pytest.raises(SystemExit) as exc:
        main(["data", "phantom", "--out", str(tmp_path / "x"), "--patients", "3", "--difficulty", "4"])
    assert exc.value.code == 2 and "--difficulty" in capsys.readouterr().err
