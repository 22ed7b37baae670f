"""A dataset: the lazily loaded cases of one folder, their class names and, when the release
defines one, its split. Readers in :mod:`seg.data.readers` build these."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from cctr.seg.data.case import CaseError, CaseRef
from cctr.seg.data.split import SPLIT_FILENAME, Split, load_split


@dataclass(frozen=True)
class Dataset:
    layout: str  # 'acdc', 'acdc-ssl4mis', 'synapse', 'nnunet'
    root: Path
    refs: tuple[CaseRef, ...]
    class_names: tuple[str, ...]
    default_split: Optional[Split] = None

    def __post_init__(self) -> None:
        ids = [r.case_id for r in self.refs]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise CaseError(f"{self.root}: duplicate case ids {dup}")

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def case_ids(self) -> tuple[str, ...]:
        return tuple(r.case_id for r in self.refs)

    @property
    def patient_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.patient_id for r in self.refs))

    def ref(self, case_id: str) -> CaseRef:
        for r in self.refs:
            if r.case_id == case_id:
                return r
        raise CaseError(f"{self.root}: no case {case_id!r}")

    def of_patients(self, patient_ids: Iterable[str]) -> tuple[CaseRef, ...]:
        """All cases (e.g. ED and ES frames) of the given patients, in dataset order."""
        wanted = set(patient_ids)
        missing = wanted - set(self.patient_ids)
        if missing:
            raise CaseError(f"{self.root}: split names patients not in the dataset: {sorted(missing)}")
        return tuple(r for r in self.refs if r.patient_id in wanted)


def folder_split(root: Path, patient_ids: Iterable[str], fallback: Optional[Split] = None) -> Optional[Split]:
    """The split a dataset folder carries: ``root/split.json`` if present (checked against
    ``patient_ids``), else ``fallback`` (the release's own split, when it has one)."""
    path = Path(root) / SPLIT_FILENAME
    if not path.is_file():
        return fallback
    split = load_split(path)
    split.check_patients(tuple(patient_ids), str(path))
    return split
