"""The field's published splits, kept as data: ACDC (as released by SSL4MIS) and Synapse
(as released by TransUNet), each with the labeled sets this project evaluates.

ACDC: the SSL4MIS lists (``train.list``, ``val.list``, ``test.list``) split the 100 training
patients 70 / 10 / 20. The labeled sets 1, 3 and 7 are the first 1, 3 and 7 patients of
``train.list``, in its order (patient099, patient038, patient050, ...), which is how SSL4MIS
picks them; they are nested.

Synapse: TransUNet's ``lists_Synapse`` split the 30 labeled abdominal CT scans 18 train /
12 test, with no validation set. TransUNet trains fully supervised, so labeled sets of 1, 2
and 4 cases are this project's choice, made the same way as ACDC's: the first 1, 2 and 4
cases of ``train.txt`` in its order (case0031, case0007, case0009, case0005). Nested, so a
result with 2 labeled cases only adds to what the 1-case run saw.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Optional, Sequence

from cctr.seg.data.split import Split, split_with_prefix_sets

ACDC_LABELED_SIZES = (1, 3, 7)
SYNAPSE_LABELED_SIZES = (1, 2, 4)


def _patients(numbers: str) -> tuple[str, ...]:
    return tuple(f"patient{int(n):03d}" for n in numbers.split())


def _cases(numbers: str) -> tuple[str, ...]:
    return tuple(f"case{int(n):04d}" for n in numbers.split())


# Patient order of SSL4MIS data/ACDC/train.list (each patient's frame01 and frame02 adjacent).
ACDC_TRAIN_ORDER = _patients(
    "099 038 050 100 058 021 049 020 072 040 060 089 004 056 098 096 031 018 094 047 "
    "048 055 097 074 043 041 063 037 095 054 026 088 032 069 006 071 012 073 061 017 "
    "025 010 057 029 051 005 036 046 062 034 076 092 070 077 067 003 091 016 014 044 "
    "042 090 053 027 035 086 023 009 079 015"
)
ACDC_VAL = _patients("002 019 028 030 039 045 078 082 085 087")
ACDC_TEST = _patients("001 007 008 011 013 022 024 033 052 059 064 065 066 068 075 080 081 083 084 093")

# Case order of TransUNet lists/lists_Synapse/train.txt, and the cases of test_vol.txt.
SYNAPSE_TRAIN_ORDER = _cases("31 7 9 5 26 39 24 34 33 30 23 40 10 21 6 27 28 37")
SYNAPSE_TEST = _cases("1 2 3 4 8 22 25 29 32 35 36 38")

ACDC_SPLIT = split_with_prefix_sets(ACDC_TRAIN_ORDER, ACDC_VAL, ACDC_TEST, ACDC_LABELED_SIZES)
SYNAPSE_SPLIT = split_with_prefix_sets(SYNAPSE_TRAIN_ORDER, (), SYNAPSE_TEST, SYNAPSE_LABELED_SIZES)

KNOWN_SPLITS = MappingProxyType({"acdc": ACDC_SPLIT, "synapse": SYNAPSE_SPLIT})


def known_split(name: str) -> Split:
    """The published split ``'acdc'`` or ``'synapse'``."""
    if name not in KNOWN_SPLITS:
        raise ValueError(f"no known split {name!r}; known: {sorted(KNOWN_SPLITS)}")
    return KNOWN_SPLITS[name]


def known_split_if_covered(name: str, patient_ids: Sequence[str]) -> Optional[Split]:
    """The published split when every patient it names is in ``patient_ids``, else ``None``
    (a partial copy of a release gets no default split rather than a silently different one)."""
    split = known_split(name)
    present = set(patient_ids)
    named = (*split.train, *split.val, *split.test)
    return split if all(p in present for p in named) else None
