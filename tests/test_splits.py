"""Splits as data: the field's ACDC and Synapse splits, the split file format, seeded drawing,
and which split a dataset folder gets by default."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from layouts import write_acdc_raw, write_nnunet, write_ssl4mis
from cctr.seg.data.case import CaseError
from cctr.seg.data.known_splits import ACDC_SPLIT, SYNAPSE_SPLIT, known_split, known_split_if_covered
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import SPLIT_FILENAME, Split, draw_split, load_split, save_split


def _p(numbers: str) -> set[str]:
    return {f"patient{int(n):03d}" for n in numbers.split()}


def test_acdc_split_is_the_ssl4mis_one():
    s = ACDC_SPLIT
    assert len(s.train) == 70 and len(s.val) == 10 and len(s.test) == 20
    assert set(s.test) == _p("001 007 008 011 013 022 024 033 052 059 064 065 066 068 075 080 081 083 084 093")
    assert set(s.val) == _p("002 019 028 030 039 045 078 082 085 087")
    assert set(s.train) | set(s.val) | set(s.test) == {f"patient{i:03d}" for i in range(1, 101)}
    assert s.labeled("1") == ("patient099",)
    assert s.labeled("3") == ("patient099", "patient038", "patient050")
    assert s.labeled("7") == ("patient099", "patient038", "patient050", "patient100", "patient058", "patient021",
                              "patient049")
    assert known_split("acdc") is ACDC_SPLIT


def test_synapse_split_is_transunets_with_nested_labeled_sets():
    s = SYNAPSE_SPLIT
    assert len(s.train) == 18 and s.val == () and len(s.test) == 12
    assert set(s.test) == {f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)}
    btcv_labeled = {f"case{n:04d}" for n in (*range(1, 11), *range(21, 41))}
    assert set(s.train) | set(s.test) == btcv_labeled
    one, two, four = s.labeled("1"), s.labeled("2"), s.labeled("4")
    assert (len(one), len(two), len(four)) == (1, 2, 4)
    assert set(one) <= set(two) <= set(four) <= set(s.train)
    assert one == ("case0031",)


def test_split_file_round_trip_and_format(tmp_path: Path):
    path = save_split(ACDC_SPLIT, tmp_path / "sub" / SPLIT_FILENAME)
    raw = json.loads(path.read_text())
    assert set(raw) == {"train", "val", "test", "labeled_sets"}
    assert raw["labeled_sets"]["3"] == ["patient099", "patient038", "patient050"]
    assert load_split(path) == ACDC_SPLIT
    assert [p.name for p in path.parent.iterdir()] == [SPLIT_FILENAME]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"val": []}', "missing key 'train'"),
        ('{"train": "patient001"}', "'train' must be a list"),
        ('{"train": ["a", "b"], "test": ["b"]}', "'b' is in both 'train' and 'test'"),
        ('{"train": ["a"], "labeled_sets": {"1": ["z"]}}', "labeled set '1' names patients not in train"),
    ],
)
def test_bad_split_file_is_named(tmp_path: Path, content: str, message: str):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(CaseError) as err:
        load_split(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_draw_split_is_seeded_disjoint_and_nested():
    ids = [f"p{i:02d}" for i in range(30)]
    a, b, c = draw_split(ids, seed=3), draw_split(list(reversed(ids)), seed=3), draw_split(ids, seed=4)
    assert a == b and a != c
    assert sorted((*a.train, *a.val, *a.test)) == ids
    assert (len(a.test), len(a.val)) == (6, 3)
    assert set(a.labeled("1")) <= set(a.labeled("3")) <= set(a.labeled("7")) <= set(a.train)
    assert a.unlabeled("3") == tuple(p for p in a.train if p not in a.labeled("3"))


def test_known_split_only_when_every_patient_is_present():
    everyone = [*ACDC_SPLIT.train, *ACDC_SPLIT.val, *ACDC_SPLIT.test]
    assert known_split_if_covered("acdc", everyone + ["patient150"]) is ACDC_SPLIT
    assert known_split_if_covered("acdc", everyone[1:]) is None
    with pytest.raises(ValueError, match="no known split 'brats'"):
        known_split("brats")


def test_full_raw_acdc_copy_gets_the_field_split(tmp_path: Path):
    write_acdc_raw(tmp_path, patients=range(1, 101), shape=(2, 4, 4), write_4d=False)
    ds = open_dataset(tmp_path)
    assert ds.default_split == ACDC_SPLIT
    assert {r.patient_id for r in ds.of_patients(ds.default_split.labeled("3"))} == _p("099 038 050")


def test_split_json_overrides_the_release_split(tmp_path: Path):
    write_ssl4mis(tmp_path, patients=(1, 2, 3), shape=(2, 4, 4), lists={"train": [1, 2], "test": [3]})
    own = Split(train=("patient002",), val=("patient001",), test=("patient003",), labeled_sets={"1": ("patient002",)})
    save_split(own, tmp_path / SPLIT_FILENAME)
    assert open_dataset(tmp_path).default_split == own


def test_folder_without_split_has_none(tmp_path: Path):
    write_nnunet(tmp_path, shape=(2, 4, 4))
    assert open_dataset(tmp_path).default_split is None


def test_draw_split_by_counts_takes_that_many_validation_and_test_patients():
    ids = [f"p{i:02d}" for i in range(20)]
    split = draw_split(ids, seed=0, counts=(4, 12))
    assert (len(split.val), len(split.test), len(split.train)) == (4, 12, 4)
    assert sorted((*split.train, *split.val, *split.test)) == ids
    assert split == draw_split(list(reversed(ids)), seed=0, counts=(4, 12))   # seeded, order-free
    assert set(split.labeled_sets) == {"1", "3"}   # the 7-patient set does not fit 4 training patients
    with pytest.raises(CaseError, match="no patient to train on"):
        draw_split(ids, seed=0, counts=(8, 12))


def _split_of(train: int) -> Split:
    ids = tuple(f"t{i:02d}" for i in range(train))
    return Split(train=ids, val=("v0",), test=("s0", "s1"), labeled_sets={"1": ids[-1:], "2": ids[:2]})


def test_with_drawn_sets_draw_0_is_the_splits_own_set_and_the_others_are_new_ones_of_its_size():
    from cctr.seg.data.split import with_drawn_sets

    split = _split_of(8)
    drawn, names = with_drawn_sets(split, "1", 4)
    assert names == ("1", "1~1", "1~2", "1~3")
    assert drawn.labeled("1") == split.labeled("1") and drawn.labeled("2") == split.labeled("2")  # kept as they were
    sets = [frozenset(drawn.labeled(n)) for n in names]
    assert all(len(s) == 1 for s in sets) and len(set(sets)) == 4   # the same size, all distinct
    assert all(s <= set(split.train) for s in sets)
    assert (drawn.train, drawn.val, drawn.test) == (split.train, split.val, split.test)
    # deterministic, and asking for more draws keeps the earlier ones
    assert with_drawn_sets(split, "1", 4) == (drawn, names)
    more, more_names = with_drawn_sets(split, "1", 6)
    assert more_names[:4] == names and all(more.labeled(n) == drawn.labeled(n) for n in names)
    assert len({frozenset(more.labeled(n)) for n in more_names}) == 6
    # a bigger set: draws of its size, distinct as sets
    two, two_names = with_drawn_sets(split, "2", 3)
    assert two_names == ("2", "2~1", "2~2")
    assert [len(two.labeled(n)) for n in two_names] == [2, 2, 2]
    assert len({frozenset(two.labeled(n)) for n in two_names}) == 3
    # a drawn split survives the JSON round trip a benchmark writes (OUT/split.json)
    assert Split.from_dict(json.loads(json.dumps(drawn.to_dict()))) == drawn


def test_with_drawn_sets_one_draw_or_all_is_the_split_itself_and_too_many_draws_are_refused():
    from cctr.seg.data.split import with_drawn_sets

    split = _split_of(3)
    assert with_drawn_sets(split, "1", 1) == (split, ("1",))
    assert with_drawn_sets(split, "all", 5) == (split, ("all",))
    assert len(with_drawn_sets(split, "1", 3)[1]) == 3   # 3 training patients: 3 distinct sets of 1
    with pytest.raises(ValueError, match="fewer draws"):
        with_drawn_sets(split, "1", 4)
    with pytest.raises(ValueError, match="fewer draws"):
        with_drawn_sets(split, "2", 4)   # C(3, 2) = 3 sets of 2
    with pytest.raises(ValueError, match="draws must be >= 1"):
        with_drawn_sets(split, "1", 0)
