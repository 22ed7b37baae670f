"""The step-time benchmark's window (scripts/bench_steptime.py): with ``--coupled`` it holds whole
refresh cycles, so the share of recomputed Fields in the mean is the share of a run."""
from __future__ import annotations

import pytest

from scripts_module import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_steptime")


@pytest.mark.parametrize("warmup, steps, cycle, expected", [
    (5, 60, 50, (50, 100)),      # the window of session 23: now two whole cycles after one
    (0, 1, 50, (50, 50)),        # at least one cycle each
    (100, 200, 100, (100, 200)),  # already whole: unchanged
    (101, 199, 100, (200, 200)),
])
def test_window_is_rounded_up_to_whole_refresh_cycles(bench, warmup, steps, cycle, expected):
    assert bench.whole_cycles(warmup, steps, cycle) == expected

