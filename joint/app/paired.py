"""Paired comparisons of two methods over what varies in a benchmark: labeled draws, seeds and
test cases (docs/USAGE.md, "Benchmarks and evidence").

Two methods are compared on the cells both ran: the same labeled draw, the same seed, the same
test case. The difference of their Dice per cell is the evidence. Its mean is reported with a
95 % interval from a hierarchical bootstrap that resamples what a repetition of the study would
draw anew: the labeled draws (with replacement), the seeds within each draw (with replacement),
and the test cases (with replacement; cases are crossed with draws and seeds, so one resample
of cases serves every (draw, seed) of a replicate). Resampling the crossed factors
independently counts the cell-level noise more than once, so the interval errs on the wide
side. With few draws the bootstrap sees few distinct draw sets, so an interval over three
draws is a rough one; the report says how many draws and seeds it rests on.

The verdict: ``better`` when the interval lies above 0, ``worse`` when below, ``not
distinguishable`` otherwise. Spreads are sample standard deviations (ddof 1) throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

# (draw, seed) -> test case id -> the method's score (mean foreground Dice of the case)
CellScores = Mapping[tuple[int, int], Mapping[str, float]]

REPLICATES = 10_000
BETTER, WORSE, TIED = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class PairedDifference:
    """A method minus the control over their common cells.

    ``mean``: the mean difference over draws, seeds and cases; ``low`` / ``high``: its 95 %
    bootstrap interval; ``unit_means``: the mean over cases of each (draw, seed); ``draws``,
    ``seeds``: how many of each it rests on (``seeds`` per draw); ``cases``: test cases.
    """

    mean: float
    low: float
    high: float
    unit_means: dict[tuple[int, int], float]
    draws: int
    seeds: int
    cases: int

    def csv_cells(self) -> list:
        """The difference's columns of a comparisons CSV: difference, low, high (exact, repr),
        verdict, draws, seeds, cases."""
        return [repr(self.mean), repr(self.low), repr(self.high), self.verdict, self.draws, self.seeds, self.cases]

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return BETTER
        if self.high < 0:
            return WORSE
        return TIED

    @property
    def unit_std(self) -> float:
        """Sample std of the (draw, seed) mean differences; nan with one unit."""
        values = list(self.unit_means.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def common_grid(method: CellScores, control: CellScores) -> tuple[list[int], list[int], list[str]]:
    """The draws, seeds and cases both ran, as a full grid: a draw is kept with the seeds that
    every kept draw ran in both, and the cases every kept cell scored in both. ValueError when
    nothing is shared."""
    units = set(method) & set(control)
    draws = sorted({d for d, _ in units})
    seeds = sorted(set.intersection(*[{s for dd, s in units if dd == d} for d in draws])) if draws else []
    if not draws or not seeds:
        raise ValueError("the two methods share no (draw, seed) to compare")
    cases = set.intersection(*[set(method[(d, s)]) & set(control[(d, s)]) for d in draws for s in seeds])
    if not cases:
        raise ValueError("the two methods share no test case to compare")
    return draws, seeds, sorted(cases)


def paired_difference(method: CellScores, control: CellScores, replicates: int = REPLICATES,
                      seed: int = 0) -> PairedDifference:
    """``method`` minus ``control`` on their common grid (:func:`common_grid`), with the
    hierarchical bootstrap interval of the module docstring (``replicates`` resamples drawn
    from ``seed``, so a table is reproducible)."""
    draws, seeds, cases = common_grid(method, control)
    diff = np.array([[[method[(d, s)][c] - control[(d, s)][c] for c in cases] for s in seeds] for d in draws])
    low, high = bootstrap_interval(diff, replicates, seed)
    units = {(d, s): float(diff[i, j].mean()) for i, d in enumerate(draws) for j, s in enumerate(seeds)}
    return PairedDifference(float(diff.mean()), low, high, units, len(draws), len(seeds), len(cases))


def bootstrap_interval(diff: np.ndarray, replicates: int = REPLICATES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the grand mean of ``diff`` ``(D draws, S seeds, N cases)``
    under the hierarchical resampling of the module docstring."""
    D, S, N = diff.shape
    rng = np.random.default_rng(seed)
    draw_idx = rng.integers(0, D, size=(replicates, D))                 # (B, D)
    seed_idx = rng.integers(0, S, size=(replicates, D, S))              # (B, D, S)
    case_counts = np.zeros((replicates, N))
    np.add.at(case_counts, (np.arange(replicates)[:, None], rng.integers(0, N, size=(replicates, N))), 1.0)
    case_mean = np.einsum("dsn,bn->bds", diff, case_counts / N)        # (B, D, S): each unit's mean over resampled cases
    rows = np.arange(replicates)[:, None, None]
    picked = case_mean[rows, draw_idx[:, :, None], seed_idx]           # (B, D, S)
    means = picked.reshape(replicates, -1).mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class GapClosed:
    """How much of the gap from ``low`` (e.g. supervised on the labeled draws) to ``full`` (e.g.
    supervised on every training label) a method closes: ``share`` = (method − low) / (full −
    low), its 95 % interval, and the two differences it is made of."""

    share: float
    low: float
    high: float
    gain: float        # method − low, paired over draws, seeds and cases
    gap: float         # full − low


def gap_closed(method: CellScores, low: CellScores, full: Mapping[int, Mapping[str, float]],
               replicates: int = REPLICATES, seed: int = 0) -> GapClosed:
    """The share of the gap ``full − low`` that ``method − low`` closes. ``method`` and ``low``
    pair over (draw, seed, case) as in :func:`paired_difference`; ``full`` (seed -> case ->
    score) has no draws (every label is in), so it pairs with the others by case only. One
    bootstrap replicate resamples the draws and seeds of the paired grid, the seeds of
    ``full`` and the cases (shared by all three), and takes the ratio of the means."""
    draws, seeds, cases = common_grid(method, low)
    full_seeds = sorted(full)
    cases = [c for c in cases if all(c in full[s] for s in full_seeds)]
    if not full_seeds or not cases:
        raise ValueError("the full-supervision runs share no test case with the others")
    m = np.array([[[method[(d, s)][c] for c in cases] for s in seeds] for d in draws])
    lo = np.array([[[low[(d, s)][c] for c in cases] for s in seeds] for d in draws])
    fu = np.array([[full[s][c] for c in cases] for s in full_seeds])               # (F, N)
    D, S, N = m.shape
    rng = np.random.default_rng(seed)
    draw_idx = rng.integers(0, D, size=(replicates, D))
    seed_idx = rng.integers(0, S, size=(replicates, D, S))
    full_idx = rng.integers(0, len(full_seeds), size=(replicates, len(full_seeds)))
    counts = np.zeros((replicates, N))
    np.add.at(counts, (np.arange(replicates)[:, None], rng.integers(0, N, size=(replicates, N))), 1.0)
    weights = counts / N
    rows = np.arange(replicates)[:, None, None]

    def grid_mean(x: np.ndarray) -> np.ndarray:
        per_unit = np.einsum("dsn,bn->bds", x, weights)
        return per_unit[rows, draw_idx[:, :, None], seed_idx].reshape(replicates, -1).mean(axis=1)

    full_mean = np.einsum("fn,bn->bf", fu, weights)[np.arange(replicates)[:, None], full_idx].mean(axis=1)
    gain_b, gap_b = grid_mean(m - lo), full_mean - grid_mean(lo)
    ratios = gain_b / np.where(np.abs(gap_b) > 1e-9, gap_b, np.nan)
    low_q, high_q = np.nanpercentile(ratios, [2.5, 97.5])
    gain, gap = float((m - lo).mean()), float(fu.mean() - lo.mean())
    return GapClosed(gain / gap if gap else float("nan"), float(low_q), float(high_q), gain, gap)


def sample_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for one value)."""
    v = np.asarray([x for x in values if not np.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
