"""seg.report: per-case CSV, mean ± sample std (ddof 1) summary per class and overall, markdown table."""
from __future__ import annotations

import csv
import math

import pytest

from cctr.seg.metrics import ClassScore
from cctr.seg.report import (
    CSV_COLUMNS,
    summarize,
    summary_markdown,
    write_scores_csv,
    write_summary_markdown,
)

NAMES = ("background", "RV", "LV")
SCORES = {
    "case_a": {1: ClassScore(0.8, 4.0, 1.0), 2: ClassScore(0.6, 8.0, 3.0)},
    "case_b": {1: ClassScore(0.4, 2.0, 0.5), 2: ClassScore(1.0, 0.0, 0.0)},
}


ROOT2 = math.sqrt(2.0)   # the sample std of two values a, b is |a - b| / sqrt(2)


def test_summary_is_mean_and_sample_std_per_class():
    s = summarize(SCORES, NAMES)
    assert s.num_cases == 2
    rv = s.per_class["RV"]
    assert (rv["dice"].mean, rv["dice"].std, rv["dice"].n) == (pytest.approx(0.6), pytest.approx(0.4 / ROOT2), 2)
    assert (rv["hd95"].mean, rv["hd95"].std) == (pytest.approx(3.0), pytest.approx(2.0 / ROOT2))
    assert rv["dice"].std != pytest.approx(0.2)   # not the population std
    assert s.per_class["LV"]["asd"].mean == pytest.approx(1.5)


def test_overall_averages_classes_first_then_cases():
    overall = summarize(SCORES, NAMES).overall
    # case means: dice 0.7 and 0.7; hd95 6.0 and 1.0
    assert (overall["dice"].mean, overall["dice"].std) == (pytest.approx(0.7), pytest.approx(0.0))
    assert (overall["hd95"].mean, overall["hd95"].std) == (pytest.approx(3.5), pytest.approx(5.0 / ROOT2))


def test_nan_values_are_left_out_and_counted():
    scores = {
        "a": {1: ClassScore(0.5, math.nan, math.nan), 2: ClassScore(0.9, 2.0, 1.0)},
        "b": {1: ClassScore(math.nan, math.nan, math.nan), 2: ClassScore(0.7, 4.0, 3.0)},
    }
    s = summarize(scores, NAMES)
    assert (s.per_class["RV"]["dice"].mean, s.per_class["RV"]["dice"].n) == (0.5, 1)
    assert math.isnan(s.per_class["RV"]["dice"].std)   # one value: no sample std
    assert s.per_class["RV"]["hd95"].n == 0 and math.isnan(s.per_class["RV"]["hd95"].mean)
    # case a: dice mean(0.5, 0.9) = 0.7; case b: only LV, 0.7
    assert (s.overall["dice"].mean, s.overall["dice"].n) == (pytest.approx(0.7), 2)
    table = summary_markdown(s)
    assert "| RV | 0.5000 (n=1) | n/a | n/a |" in table   # one value: shown without '±'
    assert "sample std" in table


def test_markdown_has_one_row_per_class_and_the_mean():
    table = summary_markdown(summarize(SCORES, NAMES), title="Test split")
    lines = table.splitlines()
    assert lines[0] == "## Test split"
    assert "2 case(s)" in table
    assert "| RV | 0.6000 ± 0.2828 | 3.00 ± 1.41 | 0.75 ± 0.35 |" in lines
    assert "| LV | 0.8000 ± 0.2828 | 4.00 ± 5.66 | 1.50 ± 2.12 |" in lines
    assert lines[-1].startswith("| **mean** | 0.7000 ± 0.0000 | 3.50 ± 3.54 |")


def test_csv_has_one_row_per_case_and_class_at_full_precision(tmp_path):
    scores = dict(SCORES, case_c={1: ClassScore(1 / 3, 1.234567891234, 0.1), 2: ClassScore(0.0, 50.0, 10.0)})
    path = write_scores_csv(tmp_path / "out" / "scores.csv", scores, NAMES)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 3 * 2
    assert rows[5] == ["case_c", "1", "RV", repr(1 / 3), "1.234567891234", "0.1"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.csv"]


def test_summary_markdown_file_matches_the_text(tmp_path):
    summary = summarize(SCORES, NAMES)
    path = write_summary_markdown(tmp_path / "summary.md", summary, "T")
    assert path.read_text() == summary_markdown(summary, "T")


def test_cases_scoring_other_classes_are_rejected():
    with pytest.raises(ValueError, match="case 'case_b'"):
        summarize({"case_a": SCORES["case_a"], "case_b": {1: ClassScore(1.0, 0.0, 0.0)}}, NAMES)
    with pytest.raises(ValueError, match="no cases"):
        summarize({}, NAMES)
