"""The validation gate of the registration-guided terms (METHOD.md part 6).

Registration teaches a student only while it knows more than the student does. At every
validation the registration's own score on the validation volumes (the atlas labels warped
onto them, mean foreground 3D Dice: the metric the students are validated with) is compared
with each student's validation Dice. A student that has reached it is *closed*: RSL gives it
nothing until a later validation finds it below again. Before the first validation every
student is open. The gate is a policy RSL consults (:meth:`RegistrationGate.is_open`); it is a
hook only to see the validation scores. REPS is not gated (gating it too lost on validation,
docs/RESULTS.md), nor are the synthesised samples, whose labels do not rest on the registration.

The registration's score comes from a callable: a constant measured once before training for a
fixed backend (:func:`joint.methods.registration_val_dice`), or, in ``cctr-coupled``, the
coupled net's score at this very validation (the coupled hook validates before the gate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from cctr.seg.hooks import TrainerHook
from cctr.seg.options import option

GATE_MODES = ("none", "validation")


@dataclass(frozen=True)
class GateConfig:
    """Gate options; nested as ``gate.*`` in :class:`joint.config.JointConfig`."""

    mode: str = option("validation", "'validation': RSL stops for a student that beats the registration there; 'none'")

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ValueError(f"gate.mode must be one of {GATE_MODES}, got {self.mode!r}")


class RegistrationGate(TrainerHook):
    """Opens and closes RSL per student at each validation.

    ``registration_dice()``: the registration's validation score now (called once per validation).
    """

    name = "gate"

    def __init__(self, registration_dice: Callable[[], float]) -> None:
        self.registration_dice = registration_dice
        self.closed: set[str] = set()   # students closed since the last validation

    def is_open(self, student: str) -> bool:
        """Whether ``student`` trains on the registration's labels now."""
        return student not in self.closed

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
