"""What one training run reads from a dataset: the labeled, unlabeled and validation cases of a
split's labeled set (:class:`TrainData`), with the labels of the unlabeled cases set aside
for diagnostics only."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

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


def load_train_data(dataset: Dataset, split: Split, labeled_set: str, with_unlabeled: bool = True) -> TrainData:
    """Load the labeled, unlabeled (unless not ``with_unlabeled``) and validation cases of
    ``split`` for ``labeled_set``."""
    labeled = tuple(ref.load() for ref in dataset.of_patients(split.labeled(labeled_set)))
    missing = [c.case_id for c in labeled if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: labeled set {labeled_set!r} has cases without a label: {missing}")
    unlabeled_refs = dataset.of_patients(split.unlabeled(labeled_set)) if with_unlabeled else ()
    loaded = tuple(ref.load() for ref in unlabeled_refs)
    unlabeled = tuple(c.with_label(None) for c in loaded)
    hidden = MappingProxyType({c.case_id: c.label for c in loaded if c.label is not None})
    val = tuple(ref.load() for ref in dataset.of_patients(split.val))
    missing = [c.case_id for c in val if c.label is None]
    if missing:
        raise CaseError(f"{dataset.root}: validation cases without a label: {missing}")
    return TrainData(labeled, unlabeled, val, tuple(dataset.class_names), hidden)
