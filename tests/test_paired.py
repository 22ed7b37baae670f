"""joint.app.paired: a method minus a control over the (labeled draw, seed, test case) cells both
ran, with a hierarchical bootstrap interval, a verdict, each (draw, seed)'s mean difference and
the project's sample-std convention."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cctr.joint.app.paired import (BETTER, TIED, WORSE, PairedDifference, bootstrap_interval, common_grid,
                                   paired_difference, sample_mean_std)

CASES = [f"case_{i:02d}" for i in range(6)]


def grid_scores(values: np.ndarray, cases=None) -> dict[tuple[int, int], dict[str, float]]:
    """(draw, seed) -> case -> value from an array ``(D, S, N)``."""
    cases = cases or [f"case_{i:02d}" for i in range(values.shape[2])]
    return {(d, s): {c: float(values[d, s, n]) for n, c in enumerate(cases)}
            for d in range(values.shape[0]) for s in range(values.shape[1])}


def control_and(diff: np.ndarray, seed: int = 0):
    """A control with scores that vary over draws, seeds and cases, and a method that is the
    control plus ``diff`` cell by cell."""
    control = np.random.default_rng(seed).uniform(0.3, 0.8, size=diff.shape)
    return grid_scores(control + diff), grid_scores(control)


@pytest.mark.parametrize("shift, verdict", [(0.05, BETTER), (-0.03, WORSE)])
def test_a_constant_difference_gives_an_interval_collapsed_on_it(shift, verdict):
    method, control = control_and(np.full((3, 2, 6), shift))
    d = paired_difference(method, control, replicates=2000)
    assert d.mean == pytest.approx(shift)
    assert d.low == pytest.approx(shift) and d.high == pytest.approx(shift)
    assert d.verdict == verdict
    assert (d.draws, d.seeds, d.cases) == (3, 2, 6)
    assert set(d.unit_means) == {(dd, s) for dd in range(3) for s in range(2)}
    assert all(v == pytest.approx(shift) for v in d.unit_means.values())
    assert d.unit_std == pytest.approx(0.0, abs=1e-12)


def test_zero_mean_symmetric_noise_is_not_distinguishable():
    noise = np.random.default_rng(1).normal(0.0, 0.05, size=(3, 2, 5))
    diff = np.concatenate([noise, -noise], axis=2)   # each (draw, seed): symmetric about 0, mean exactly 0
    method, control = control_and(diff)
    d = paired_difference(method, control, replicates=4000)
    assert d.mean == pytest.approx(0.0, abs=1e-12)
    assert d.low < 0.0 < d.high and d.high - d.low > 0.005
    assert d.verdict == TIED


def test_the_verdict_reads_the_interval_not_the_mean():
    assert PairedDifference(0.02, 0.001, 0.04, {}, 3, 2, 10).verdict == BETTER
    assert PairedDifference(0.02, -0.001, 0.04, {}, 3, 2, 10).verdict == TIED
    assert PairedDifference(-0.02, -0.04, -0.001, {}, 3, 2, 10).verdict == WORSE
    assert PairedDifference(-0.02, -0.04, 0.0, {}, 3, 2, 10).verdict == TIED


def _noisy(draws: int, cases: int, seed: int = 2) -> np.ndarray:
    """A difference of mean 0.02 with a per-draw effect and per-cell noise."""
    rng = np.random.default_rng(seed)
    per_draw = rng.normal(0.0, 0.02, size=(draws, 1, 1))
    return 0.02 + per_draw + rng.normal(0.0, 0.05, size=(draws, 2, cases))


def test_more_draws_and_more_cases_narrow_the_interval():
    def width(draws: int, cases: int) -> float:
        d = paired_difference(*control_and(_noisy(draws, cases)), replicates=3000)
        return d.high - d.low

    few, more_cases, more_draws, both = width(3, 4), width(3, 40), width(24, 4), width(24, 40)
    assert more_cases < few and more_draws < few
    assert both < more_cases and both < more_draws
    assert both < 0.5 * few


def test_the_bootstrap_resamples_draws_seeds_and_cases():
    # a difference that varies between draws only: a case or seed resampling alone would see none
    by_draw = np.broadcast_to(np.array([0.0, 0.1, 0.2, 0.3])[:, None, None], (4, 2, 5)).copy()
    low, high = bootstrap_interval(by_draw, replicates=3000)
    assert low < 0.15 < high and high - low > 0.1
    by_seed = np.broadcast_to(np.array([0.0, 0.2])[None, :, None], (3, 2, 5)).copy()
    low, high = bootstrap_interval(by_seed, replicates=3000)
    assert low < 0.1 < high and high - low > 0.05
    by_case = np.broadcast_to(np.linspace(-0.2, 0.4, 6)[None, None, :], (3, 2, 6)).copy()
    low, high = bootstrap_interval(by_case, replicates=3000)
    assert low < 0.1 < high and high - low > 0.1
    # reproducible from its seed
    assert bootstrap_interval(by_case, replicates=500, seed=7) == bootstrap_interval(by_case, replicates=500, seed=7)
    wider = bootstrap_interval(by_case, replicates=3000, level=0.99)
    assert wider[0] < low and wider[1] > high


def test_the_grid_keeps_only_the_draws_seeds_and_cases_both_ran():
    method = {(d, s): {c: 0.9 for c in CASES} for d in range(3) for s in range(2)}
    control = {(d, s): {c: 0.5 for c in CASES[:4]} for d in range(2) for s in range(2)}
    del control[(1, 1)]                       # draw 1 ran seed 0 only in the control
    control[(0, 0)]["case_00"] = 0.1          # the only cell that differs: it is in the common grid
    method[(0, 1)]["case_05"] = -5.0          # outside the common grid (case_05): never counted
    method[(2, 0)]["case_00"] = -5.0          # outside (draw 2): never counted
    assert common_grid(method, control) == ([0, 1], [0], CASES[:4])
    d = paired_difference(method, control, replicates=500)
    assert (d.draws, d.seeds, d.cases) == (2, 1, 4)
    assert set(d.unit_means) == {(0, 0), (1, 0)}
    assert d.unit_means[(0, 0)] == pytest.approx((0.8 + 3 * 0.4) / 4)
    assert d.unit_means[(1, 0)] == pytest.approx(0.4)
    assert d.mean == pytest.approx((0.8 + 7 * 0.4) / 8)
    # a case one (draw, seed) lacks leaves the whole grid
    method[(1, 0)].pop("case_01")
    assert common_grid(method, control)[2] == ["case_00", "case_02", "case_03"]
    with pytest.raises(ValueError, match="no \\(draw, seed\\)"):
        common_grid(method, {(5, 0): {"case_00": 0.5}})
    with pytest.raises(ValueError, match="no test case"):
        common_grid(method, {(0, 0): {"other": 0.5}})


def test_unit_means_and_the_sample_std_convention():
    diff = np.zeros((2, 1, 3))
    diff[0, 0] = [0.1, 0.2, 0.3]     # unit mean 0.2
    diff[1, 0] = [0.3, 0.4, 0.5]     # unit mean 0.4
    d = paired_difference(*control_and(diff), replicates=500)
    assert d.unit_means == {(0, 0): pytest.approx(0.2), (1, 0): pytest.approx(0.4)}
    assert d.unit_std == pytest.approx(0.2 / math.sqrt(2))   # ddof 1: |a - b| / sqrt(2), not 0.1
    one = paired_difference(*control_and(diff[:1]), replicates=500)
    assert list(one.unit_means) == [(0, 0)] and math.isnan(one.unit_std)

    assert sample_mean_std([1.0, 2.0, 3.0]) == (pytest.approx(2.0), pytest.approx(1.0))   # population: 0.816
    mean, std = sample_mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)
    assert sample_mean_std([1.0, float("nan"), 3.0]) == (pytest.approx(2.0), pytest.approx(math.sqrt(2.0)))
    assert all(math.isnan(v) for v in sample_mean_std([]))


def test_gap_closed_is_the_share_of_the_gap_to_full_supervision_with_an_interval():
    from cctr.joint.app.paired import gap_closed

    rng = np.random.default_rng(3)
    cases = [f"c{i}" for i in range(12)]
    low = {(d, s): {c: 0.5 + 0.02 * rng.standard_normal() for c in cases} for d in range(3) for s in range(2)}
    method = {k: {c: v + 0.1 for c, v in per.items()} for k, per in low.items()}    # gains 0.1 everywhere
    full = {s: {c: 0.9 for c in cases} for s in range(2)}
    r = gap_closed(method, low, full)
    assert r.gain == pytest.approx(0.1) and r.gap == pytest.approx(0.9 - np.mean([list(v.values()) for v in low.values()]))
    assert r.share == pytest.approx(r.gain / r.gap) and r.low <= r.share <= r.high
    same = gap_closed(low, low, full)
    assert same.share == 0.0 and same.low == same.high == 0.0
    with pytest.raises(ValueError, match="share no test case"):
        gap_closed(method, low, {0: {"other": 0.9}})
