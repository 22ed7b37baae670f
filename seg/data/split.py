"""Splits as data: which patients train, validate and test, and which training patients are labeled.

Splits name *patient ids* (both frames of an ACDC patient go together), never slice counts.
A split is a small JSON file::

    {"train": [...], "val": [...], "test": [...],
     "labeled_sets": {"1": ["patient099"], "3": [...], ...}}

Every command that trains or evaluates takes ``--split FILE`` and, where it trains,
``--labeled NAME`` to pick one of ``labeled_sets``. A dataset folder may carry its own split
as ``split.json`` at its top level (:data:`SPLIT_FILENAME`); readers then attach it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

from cctr.seg.atomic import write_text_atomic
from cctr.seg.data.case import CaseError

SPLIT_FILENAME = "split.json"


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    labeled_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups = {"train": self.train, "val": self.val, "test": self.test}
        seen: dict[str, str] = {}
        for name, ids in groups.items():
            for pid in ids:
                if pid in seen:
                    raise CaseError(f"split: patient {pid!r} is in both {seen[pid]!r} and {name!r}")
                seen[pid] = name
        train = set(self.train)
        for key, ids in self.labeled_sets.items():
            outside = [p for p in ids if p not in train]
            if outside:
                raise CaseError(f"split: labeled set {key!r} names patients not in train: {outside}")

    def labeled(self, name: str) -> tuple[str, ...]:
        """Patient ids of labeled set ``name``; ``'all'`` means every training patient."""
        if name == "all":
            return self.train
        if name not in self.labeled_sets:
            raise CaseError(f"split: no labeled set {name!r}; known: {sorted(self.labeled_sets)} or 'all'")
        return tuple(self.labeled_sets[name])

    def unlabeled(self, name: str) -> tuple[str, ...]:
        chosen = set(self.labeled(name))
        return tuple(p for p in self.train if p not in chosen)

    def to_dict(self) -> dict:
        return {
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "labeled_sets": {k: list(v) for k, v in self.labeled_sets.items()},
        }

    @staticmethod
    def from_dict(d: Mapping, where: str = "split") -> "Split":
        if not isinstance(d, Mapping):
            raise CaseError(f"{where}: a split must be a JSON object, got {type(d).__name__}")
        if "train" not in d:
            raise CaseError(f"{where}: missing key 'train'")
        sets = d.get("labeled_sets", {})
        if not isinstance(sets, Mapping):
            raise CaseError(f"{where}: 'labeled_sets' must map a name to a list of patient ids")
        try:
            return Split(
                train=_ids(d["train"], "train"),
                val=_ids(d.get("val", []), "val"),
                test=_ids(d.get("test", []), "test"),
                labeled_sets={str(k): _ids(v, f"labeled_sets[{k!r}]") for k, v in sets.items()},
            )
        except CaseError as exc:
            if where == "split":
                raise
            raise CaseError(f"{where}: {exc}") from exc

    def check_patients(self, patient_ids: Sequence[str], where: str) -> None:
        """Raise :class:`CaseError` naming ``where`` if the split names patients not in ``patient_ids``."""
        known = set(patient_ids)
        named = [*self.train, *self.val, *self.test]
        missing = [p for p in dict.fromkeys(named) if p not in known]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise CaseError(f"{where}: split names patients that are not in the dataset: {shown}")


def _ids(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CaseError(f"split: {key!r} must be a list of patient id strings")
    return tuple(value)


def save_split(split: Split, path: Path) -> Path:
    """Write ``split`` as JSON, atomically."""
    return write_text_atomic(path, json.dumps(split.to_dict(), indent=2))


def load_split(path: Path) -> Split:
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{path}: split file not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path}: not valid JSON ({exc})") from exc
    return Split.from_dict(d, where=str(path))


def patients_of(case_ids: Sequence[str], patient_of: Mapping[str, str]) -> tuple[str, ...]:
    """Distinct patient ids of ``case_ids``, in first-seen order."""
    out: dict[str, None] = {}
    for cid in case_ids:
        out.setdefault(patient_of[cid], None)
    return tuple(out)


def draw_split(
    patient_ids: Sequence[str],
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    labeled_sizes: Sequence[int] = (1, 3, 7),
    unlabeled_ids: Sequence[str] = (),
    counts: Optional[tuple[int, int]] = None,
) -> Split:
    """A random split of ``patient_ids`` drawn from ``seed`` (same seed, same split); ``counts``
    = (validation, test) patients instead of the fractions.

    Labeled sets are nested (the 1-patient set is inside the 3-patient set, and so on),
    as in the field's ACDC protocol; sizes larger than the training set are left out.
    ``unlabeled_ids`` (patients without any label) cannot validate or test: they join the
    training patients after the draw, outside every labeled set. A split that would leave
    no labeled patient to train on is refused.
    """
    import numpy as np

    pool = set(unlabeled_ids)
    ids = sorted(p for p in dict.fromkeys(patient_ids) if p not in pool)
    if len(ids) < 3:
        raise CaseError(f"split: need at least 3 labeled patients to draw train/val/test, got {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_val, n_test = counts or (max(1, round(val_fraction * len(ids))), max(1, round(test_fraction * len(ids))))
    if n_test + n_val >= len(ids):
        raise CaseError(f"split: {len(ids)} labeled patients with val fraction {val_fraction:g} ({n_val}) and test "
                        f"fraction {test_fraction:g} ({n_test}) leave no patient to train on; lower the fractions")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    labeled = {str(n): tuple(train[:n]) for n in labeled_sizes if 0 < n <= len(train)}
    if not labeled:
        raise CaseError(f"split: no labeled set size {tuple(labeled_sizes)} fits the {len(train)} training patient(s); "
                        f"ask for {len(train)} or fewer")
    train += sorted(pool)
    return Split(train=tuple(train), val=tuple(sorted(val)), test=tuple(sorted(test)), labeled_sets=labeled)


def with_drawn_sets(split: Split, name: str, draws: int) -> tuple[Split, tuple[str, ...]]:
    """``split`` with ``draws - 1`` more labeled sets the size of set ``name``, and the names of
    all ``draws`` sets, ``name`` first: a benchmark's labeled draws.

    Draw 0 is ``name`` itself (the split's own set: for ACDC the field's); draw ``d >= 1``,
    named ``f"{name}~{d}"``, is drawn from the training patients from the seed ``(d, size)``,
    uniformly among the sets no earlier draw took, so the same split gives the same draws and
    asking for more draws keeps the earlier ones. ``'all'`` has one draw only.
    """
    import numpy as np

    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if name == "all" or draws == 1:
        return split, (name,)
    own = tuple(split.labeled(name))
    size, pool = len(own), sorted(split.train)
    if math.comb(len(pool), size) < draws:
        raise ValueError(f"split: {len(pool)} training patients have only {math.comb(len(pool), size)} distinct labeled "
                         f"set(s) of {size}; ask for fewer draws")
    taken, sets = {frozenset(own)}, dict(split.labeled_sets)
    for d in range(1, draws):
        rng = np.random.default_rng((d, size))
        while True:
            pick = tuple(str(p) for p in rng.choice(pool, size=size, replace=False))
            if frozenset(pick) not in taken:
                break
        taken.add(frozenset(pick))
        sets[f"{name}~{d}"] = pick
    return replace(split, labeled_sets=sets), (name, *(f"{name}~{d}" for d in range(1, draws)))


def split_with_prefix_sets(
    train_in_order: Sequence[str],
    val: Sequence[str],
    test: Sequence[str],
    labeled_sizes: Sequence[int],
) -> Split:
    """A split whose labeled set of size n is the first n training patients in the given order.

    This is how the field's releases define labeled sets (SSL4MIS takes the head of its
    ``train.list``), so the order of ``train_in_order`` is part of the protocol.
    """
    train = tuple(dict.fromkeys(train_in_order))
    labeled = {str(n): train[:n] for n in labeled_sizes if 0 < n <= len(train)}
    return Split(train=train, val=tuple(val), test=tuple(test), labeled_sets=labeled)
