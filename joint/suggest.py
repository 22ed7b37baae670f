"""Which unlabeled patients to label next: the score ``cctr suggest`` ranks them by, and the
greedy choice of several that are not near-copies of each other.

A candidate is a patient (labels come per patient: both frames of an ACDC patient go
together); its components are the means over its scans of the evidence of
:mod:`joint.scan_evidence`:

- ``disagreement``: 1 - Dice(student A, student B), what the students have not learned;
- ``atlas_misfit``: 1 - the mean over both students of their Dice with the best-fitting warped
  atlas label, where what is labeled does not fit what the students see;
- ``distance``: how far the scan lies from the labeled scans under registration: the nearest
  labeled scan's deformation (mm) and dissimilarity after registration, each divided by its
  median over the pool so neither unit dominates, summed (:class:`DistanceScale`).

The score of a candidate is the weighted mean of its components' ranks within the pool
(0 the lowest, 1 the highest), so components in any unit combine and one outlier cannot take
over. Weights are :class:`SuggestConfig`'s; components nobody has (a one-student run, no
registration) drop out. The default weights were chosen on validation scans only
(docs/USAGE.md, "How the forms were chosen"): the disagreement and the misfit, equally; the
distance ranked the students' error on validation scans no better than chance, so it weighs 0
by default and serves the choice of several (below) and the ``farthest`` rule.

Several patients (``k > 1``) are chosen greedily: after each pick, the pick joins the labeled
scans, so every remaining candidate's ``distance`` becomes the distance to the nearest of the
labeled scans *and the picks* (the pool's scans are registered onto the pick's), and the ranks
are taken again. A candidate closer to a pick than ``near_copy`` times the pool's median
distance to the labeled scans is a near-copy of it and is taken only when nothing else is
left. With weights ``(0, 0, 1)`` this is farthest-first traversal: the ``farthest`` rule.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from cctr.joint.scan_evidence import PairDistance, ScanEvidence
from cctr.seg.options import option

COMPONENTS = ("disagreement", "atlas_misfit", "distance")

# (candidate scans, picked scans) -> distance of every (candidate scan, picked scan) pair
RegisterOntoPick = Callable[[Sequence[str], Sequence[str]], Mapping[tuple[str, str], PairDistance]]


@dataclass(frozen=True)
class SuggestConfig:
    """How candidates are scored and chosen (module docstring)."""

    k: int = option(1, "patients to choose")
    disagreement: float = option(1.0, "weight of the students' disagreement (1 - Dice(A, B))")
    atlas_misfit: float = option(1.0, "weight of the warped atlas label's misfit with the students")
    # 0: on validation scans the distance did not rank the students' error (docs/USAGE.md)
    distance: float = option(0.0, "weight of the distance to the labeled scans under registration")
    near_copy: float = option(0.5, "a candidate closer to a pick than this times the pool's median distance "
                                   "to the labeled scans is a near-copy")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"suggest: k must be >= 1, got {self.k}")
        if min(self.weights) < 0 or sum(self.weights) <= 0:
            raise ValueError(f"suggest: weights must be >= 0 and not all 0, got {self.weights}")
        if self.near_copy < 0:
            raise ValueError(f"suggest: near_copy must be >= 0, got {self.near_copy}")

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.disagreement, self.atlas_misfit, self.distance)


FARTHEST = SuggestConfig(disagreement=0.0, atlas_misfit=0.0, distance=1.0)


@dataclass(frozen=True)
class DistanceScale:
    """The medians that make deformation (mm) and dissimilarity comparable; a median of 0
    (the identity backend deforms nothing) drops its term."""

    deformation_mm: float
    dissimilarity: float

    @staticmethod
    def of(distances: Sequence[PairDistance]) -> "DistanceScale":
        if not distances:
            return DistanceScale(0.0, 0.0)
        return DistanceScale(float(np.median([d.deformation_mm for d in distances])),
                             float(np.median([d.dissimilarity for d in distances])))

    def __call__(self, d: PairDistance) -> float:
        total = 0.0
        if self.deformation_mm > 0:
            total += d.deformation_mm / self.deformation_mm
        if self.dissimilarity > 0:
            total += d.dissimilarity / self.dissimilarity
        return total


@dataclass(frozen=True)
class Candidate:
    """One patient of the pool: its scans and components (None: not available)."""

    patient_id: str
    cases: tuple[str, ...]
    disagreement: Optional[float]
    atlas_misfit: Optional[float]
    deformation_mm: Optional[float]   # to the nearest labeled scan, mean over the patient's scans
    dissimilarity: Optional[float]
    distance: Optional[float]         # scaled (DistanceScale), to the nearest labeled scan


@dataclass(frozen=True)
class Ranked:
    """A candidate with its ranks in the whole pool and its score (before any pick), and
    ``pick``: 1 for the first chosen, 2 for the second, ..., 0 when not chosen."""

    candidate: Candidate
    ranks: Mapping[str, float]
    score: float
    pick: int = 0


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    found = [v for v in values if v is not None]
    return float(np.mean(found)) if found and len(found) == len(values) else None


def case_components(e: ScanEvidence, scale: DistanceScale) -> dict[str, Optional[float]]:
    """The components of one scan, distance to its nearest atlas."""
    fits = [f for f in (e.atlas_fit_a, e.atlas_fit_b) if f is not None]
    return {
        "disagreement": None if e.students_dice is None else 1.0 - e.students_dice,
        "atlas_misfit": 1.0 - float(np.mean(fits)) if fits else None,
        "distance": min(scale(d) for d in e.distances.values()) if e.distances else None,
    }


def candidates(evidence: Mapping[str, ScanEvidence], scale: DistanceScale) -> list[Candidate]:
    """The pool's patients in first-seen order, each the mean of its scans' components."""
    by_patient: dict[str, list[ScanEvidence]] = {}
    for e in evidence.values():
        by_patient.setdefault(e.patient_id, []).append(e)
    out = []
    for patient, scans in by_patient.items():
        parts = [case_components(e, scale) for e in scans]
        nearest = [e.distances[min(e.distances, key=lambda a: scale(e.distances[a]))] if e.distances else None
                   for e in scans]
        out.append(Candidate(
            patient, tuple(e.case_id for e in scans),
            _mean([p["disagreement"] for p in parts]), _mean([p["atlas_misfit"] for p in parts]),
            _mean([None if d is None else d.deformation_mm for d in nearest]),
            _mean([None if d is None else d.dissimilarity for d in nearest]),
            _mean([p["distance"] for p in parts])))
    return out


def ranks01(values: Sequence[float]) -> np.ndarray:
    """Average ranks scaled to [0, 1] (0 the lowest); 0.5 for all when they are all equal or
    there is one value."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=float)
    if v.size < 2 or np.all(v == v[0]):
        return np.full(v.size, 0.5)
    return (rankdata(v) - 1) / (v.size - 1)


def scores(rows: Sequence[Mapping[str, Optional[float]]], cfg: SuggestConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The weighted mean rank of each row (a mapping of the components), and the ranks of
    every component all rows have (reported whatever its weight); a component missing in any
    row, or of weight 0, does not enter the score."""
    known = [name for name in COMPONENTS if rows and all(r[name] is not None for r in rows)]
    used = {name: w for name, w in zip(COMPONENTS, cfg.weights) if w > 0 and name in known}
    if not used:
        raise ValueError("suggest: no weighted component is available (one student and no registration?)")
    ranks = {name: ranks01([r[name] for r in rows]) for name in known}  # type: ignore[misc]
    total = sum(used.values())
    return sum(ranks[n] * w for n, w in used.items()) / total, ranks


def choose(pool: Sequence[Candidate], evidence: Mapping[str, ScanEvidence], scale: DistanceScale,
           cfg: SuggestConfig, register_onto_pick: Optional[RegisterOntoPick] = None) -> list[Ranked]:
    """Every candidate ranked (module docstring), the ``cfg.k`` chosen first in pick order, the
    rest by their score in the whole pool. ``register_onto_pick`` gives the distances of the
    remaining scans to a pick's scans; without it (no registration) no distance is updated."""
    if cfg.k > len(pool):
        raise ValueError(f"suggest: asked for {cfg.k} patient(s), the pool holds {len(pool)}")
    rows = [{n: getattr(c, n) for n in COMPONENTS} for c in pool]
    first, first_ranks = scores(rows, cfg)
    ranked = [Ranked(c, {n: float(r[i]) for n, r in first_ranks.items()}, float(first[i])) for i, c in enumerate(pool)]
    # per scan: the scaled distance to the nearest anchor (labeled scans, then also the picks)
    nearest = {case: min(scale(d) for d in evidence[case].distances.values())
               for c in pool for case in c.cases if evidence[case].distances}
    reference = float(np.median([c.distance for c in pool])) if all(c.distance is not None for c in pool) else 0.0
    to_pick: dict[str, float] = {}   # patient -> scaled distance to the nearest pick
    remaining, picks = list(range(len(pool))), []
    while len(picks) < cfg.k:
        current = [replace(pool[i], distance=_mean([nearest.get(case) for case in pool[i].cases])) for i in remaining]
        score, _ = scores([{n: getattr(c, n) for n in COMPONENTS} for c in current], cfg)
        distinct = [j for j, i in enumerate(remaining)
                    if to_pick.get(pool[i].patient_id, np.inf) >= cfg.near_copy * reference]
        allowed = distinct or list(range(len(remaining)))
        best = max(allowed, key=lambda j: (score[j], -j))   # ties: the earlier candidate
        chosen = remaining.pop(best)
        picks.append(chosen)
        if len(picks) < cfg.k and register_onto_pick is not None and remaining:
            cases = [case for i in remaining for case in pool[i].cases]
            found = register_onto_pick(cases, pool[chosen].cases)
            for i in remaining:
                for case in pool[i].cases:
                    d = min(scale(found[(case, p)]) for p in pool[chosen].cases)
                    nearest[case] = min(nearest.get(case, np.inf), d)
                here = float(np.mean([min(scale(found[(case, p)]) for p in pool[chosen].cases)
                                      for case in pool[i].cases]))
                to_pick[pool[i].patient_id] = min(to_pick.get(pool[i].patient_id, np.inf), here)
    order = {i: n + 1 for n, i in enumerate(picks)}
    out = [replace(r, pick=order.get(i, 0)) for i, r in enumerate(ranked)]
    return sorted(out, key=lambda r: (r.pick == 0, r.pick, -r.score, r.candidate.patient_id))


def random_choice(pool: Sequence[Candidate], k: int, seed: Sequence[int]) -> list[str]:
    """``k`` patients drawn uniformly from ``seed``; the first ``j`` of a draw of ``k`` are the
    draw of ``j``, so the choices of several ``k`` nest as the greedy ones do."""
    if k > len(pool):
        raise ValueError(f"random choice: asked for {k} patient(s), the pool holds {len(pool)}")
    order = np.random.default_rng(list(seed)).permutation(len(pool))
    return [pool[int(i)].patient_id for i in order[:k]]
