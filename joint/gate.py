"""The validation gate of the registration-guided terms (METHOD.md part 6).

Registration teaches a student only while it knows more than the student does. At every
validation the registration's own score on the validation volumes (the atlas labels warped
onto them, mean foreground 3D Dice: the metric the students are validated with) is compared
with each student's validation Dice. A student that has reached it is *closed*: the gated
terms give it nothing until a later validation finds it below again. Before the first
validation every student is open. The gated terms are RSL (``gate.terms='rsl'``) or RSL and
REPS (``'rsl+reps'``); a closed student's pixel contrast then has only its own positive, as
in ``cct``.

The registration's score comes from a callable: a constant measured once before training for a
fixed backend (:func:`joint.methods.registration_val_dice`), or, in ``cctr-coupled``, the
coupled net's score at this very validation (the coupled hook validates before the gate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from cctr.seg.hooks import TrainerHook

GATE_MODES = ("none", "validation")
GATE_TERMS = ("rsl", "rsl+reps")


@dataclass(frozen=True)
class GateConfig:
    """Gate options; nested as ``gate.*`` in :class:`joint.config.JointConfig`."""

    mode: str = "validation"   # one of GATE_MODES; 'validation' needs validation volumes, else it is off
    terms: str = "rsl"         # one of GATE_TERMS: which registration-guided terms a closed student loses

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate.mode must be one of {GATE_MODES}, got {self.mode!r}")
        if self.terms not in GATE_TERMS:
            raise ValueError(f"gate.terms must be one of {GATE_TERMS}, got {self.terms!r}")

    @property
    def term_names(self) -> tuple[str, ...]:
        """The hook names (``rsl``, ``reps``) of the gated terms."""
        return tuple(self.terms.split("+"))


class RegistrationGate(TrainerHook):
    """Opens and closes the registration-guided terms per student at each validation.

    ``registration_dice()``: the registration's validation score now (called once per validation).
    ``terms``: the names of the hooks whose terms it gates (:attr:`GateConfig.term_names`).
    """

    name = "gate"

    def __init__(self, registration_dice: Callable[[], float], terms: tuple[str, ...]) -> None:
        self.registration_dice = registration_dice
        self.terms = tuple(terms)
        self.closed: set[str] = set()   # students closed since the last validation

    def is_open(self, student: str, term: str) -> bool:
        """Whether ``student`` trains on hook ``term``'s registration signal now."""
        return term not in self.terms or student not in self.closed

    def validate(self, step: int, scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Close each student whose validation Dice reaches the registration's, open the others;
        logs the registration's score and ``open_<student>`` (1 or 0). Every process validates
        the same weights, so every process decides alike."""
        reference = float(self.registration_dice())
        self.closed = {n for n, record in scores.items() if record["dice"] >= reference}
        return {"registration_dice": reference, **{f"open_{n}": float(n not in self.closed) for n in scores}}

    def state_dict(self) -> dict:
        return {"closed": sorted(self.closed)}

    def load_state_dict(self, state: Mapping) -> None:
        self.closed = set(state.get("closed", ()))
