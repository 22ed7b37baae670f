"""What one training run reads from a dataset: the labeled, unlabeled and validation cases of a
split's labeled set (:class:`TrainData`), with the labels of the unlabeled cases set aside
for diagnostics only.

Unlabeled scans added to the dataset after its split was drawn (a new ``imagesUnlabeled/``
file) are what semi-supervised training is for: a patient the split does not name, whose
scans all lack a label and none sits in a test folder (``imagesTs/``, ACDC's ``testing/``,
Synapse's test volumes), joins the unlabeled pool of every run that has one. Such patients
never join validation or test, which need labels and the split's say."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split


@dataclass(frozen=True)
class TrainData:
    """The cases one run trains and validates on (labels of unlabeled cases already dropped).

    ``diagnostic_labels``: case id -> uint8 ``(Z, Y, X)`` label of an UNLABELED case where the
    dataset has one (the phantoms do). Diagnostics only (``seg.diagnostics``,
    ``rsl/target_dice_hidden``): never read by any loss, so a run is bit-identical without it.
    """

    labeled: tuple[Case, ...]
    unlabeled: tuple[Case, ...]
    val: tuple[Case, ...]
    class_names: tuple[str, ...]
    diagnostic_labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    unlisted: tuple[str, ...] = ()   # patients the split does not name whose scans joined the unlabeled pool


# subsets (CaseRef.meta["subset"]) of the readers that hold a release's test scans
TEST_SUBSETS = ("imagesTs", "testing", "test_vol_h5")


def unlisted_unlabeled(dataset: Dataset, split: Split) -> tuple[str, ...]:
    """Patients the split does not name whose scans are all unlabeled and none a test scan."""
    named = {*split.train, *split.val, *split.test}
    refs: dict[str, list] = {}
    for ref in dataset.refs:
        if ref.patient_id not in named:
            refs.setdefault(ref.patient_id, []).append(ref)
    return tuple(pid for pid, rs in refs.items()
                 if not any(r.has_label or r.meta.get("subset") in TEST_SUBSETS for r in rs))


def unlisted_labeled(dataset: Dataset, split: Split) -> tuple[str, ...]:
    """Patients the split does not name that have a labeled scan (a new split would use them)."""
    named = {*split.train, *split.val, *split.test}
    return tuple(dict.fromkeys(r.patient_id for r in dataset.refs if r.patient_id not in named and r.has_label))


def pool_note(added: Sequence[str], ignored: Sequence[str]) -> str:
    """The one line a run prints about patients its split does not name ('' when there are none)."""
    def shown(ids: Sequence[str]) -> str:
        return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    parts = []
    if added:
        parts.append(f"{len(added)} unlabeled patient(s) not in the split join the unlabeled pool ({shown(added)})")
    if ignored:
        parts.append(f"{len(ignored)} labeled patient(s) not in the split are not used ({shown(ignored)}; "
                     "`cctr data split` draws a split with them)")
    return "; ".join(parts)


def load_train_data(dataset: Dataset, split: Split, labeled_set: str, with_unlabeled: bool = True) -> TrainData:
    """Load the labeled, unlabeled (unless not ``with_unlabeled``) and validation cases of
    ``split`` for ``labeled_set``; the unlabeled pool also gets :func:`unlisted_unlabeled`."""
    if not split.labeled(labeled_set):
        raise CaseError(f"{dataset.root}: labeled set {labeled_set!r} of the split names no patient")
    labeled = tuple(ref.load() for ref in dataset.of_patients(split.labeled(labeled_set)))
    missing = [c.case_id for c in labeled if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: labeled set {labeled_set!r} has cases without a label: {missing}")
    unlisted = unlisted_unlabeled(dataset, split) if with_unlabeled else ()
    unlabeled_refs = dataset.of_patients((*split.unlabeled(labeled_set), *unlisted)) if with_unlabeled else ()
    loaded = tuple(ref.load() for ref in unlabeled_refs)
    unlabeled = tuple(c.with_label(None) for c in loaded)
    hidden = MappingProxyType({c.case_id: c.label for c in loaded if c.label is not None})
    val = tuple(ref.load() for ref in dataset.of_patients(split.val))
    missing = [c.case_id for c in val if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: validation cases without a label: {missing}")
    return TrainData(labeled, unlabeled, val, tuple(dataset.class_names), hidden, unlisted)
