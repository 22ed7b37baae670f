"""Stopping on non-finite numbers: a loss term, a gradient or a state to be saved that holds
NaN or inf raises :class:`NonFiniteError` naming the step and the culprit, so a diverged run
stops at once instead of training on, and never writes a checkpoint of NaN weights.

:class:`BadStepBudget` lets a trainer skip a few bad steps (zero gradients, no optimiser
step) instead of stopping; the default budget is 0.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Mapping, Optional, TextIO

import torch


ADVICE = "; training stopped (lower the learning rate, or check the input data)"


class NonFiniteError(ValueError):
    """A loss, gradient or saved state holds NaN or inf (a ValueError, so the CLI shows one
    line). ``detail`` is the finding alone, without the advice."""

    def __init__(self, detail: str, advice: str = ADVICE) -> None:
        super().__init__(detail + advice)
        self.detail = detail


def _describe(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf")


def check_losses(step: int, terms: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteError` naming ``step`` (1-based, as logged) and the first term
    of ``terms`` (name -> scalar) that is not finite. One device sync for all terms."""
    if not terms:
        return
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).cpu()
    if bool(torch.isfinite(values).all()):
        return
    for (name, _), v in zip(terms.items(), values.tolist()):
        if not math.isfinite(v):
            raise NonFiniteError(f"step {step}: loss term {name!r} is {_describe(v)}")


def check_gradients(step: int, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
    """Raise :class:`NonFiniteError` naming ``step`` and the first parameter whose gradient
    holds NaN or inf (parameters without a gradient are skipped)."""
    named = [(n, p.grad) for n, p in named_parameters if p.grad is not None]
    if not named:
        return
    ok = torch.stack([torch.isfinite(g).all() for _, g in named]).cpu()
    if bool(ok.all()):
        return
    name = named[int((~ok).nonzero()[0])][0]
    raise NonFiniteError(f"step {step}: gradient of {name!r} is not finite")


def first_non_finite(state: Any, prefix: str = "") -> Optional[str]:
    """The dotted key of the first floating tensor (or float) in a nested state (dicts, lists,
    tensors, numbers) holding NaN or inf, ``None`` when all are finite."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else (prefix or "<tensor>")
        return None
    if isinstance(state, float):
        return None if math.isfinite(state) else (prefix or "<value>")
    if isinstance(state, Mapping):
        items: Iterable[tuple[Any, Any]] = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def check_state_finite(state: Any, what: str, allow: Iterable[str] = ("best_score",)) -> None:
    """Refuse to save ``state`` (a checkpoint payload) when a tensor in it is not finite.
    Top-level keys in ``allow`` are not checked (e.g. a best score of -inf before any
    validation is legitimate)."""
    skip = set(allow)
    checked = {k: v for k, v in state.items() if k not in skip} if isinstance(state, Mapping) else state
    bad = first_non_finite(checked)
    if bad is not None:
        raise NonFiniteError(f"{what}: not written, {bad!r} holds NaN or inf", advice=" (training diverged)")


class BadStepBudget:
    """How many non-finite steps a trainer may skip before stopping (0: stop at the first)."""

    def __init__(self, allowed: int = 0, stream: TextIO | None = None) -> None:
        if allowed < 0:
            raise ValueError(f"the number of bad steps to skip must be >= 0, got {allowed}")
        self.allowed = allowed
        self.skipped = 0
        self._stream = stream

    def absorb(self, error: NonFiniteError) -> bool:
        """True (with a warning on stderr) when this bad step may be skipped; False when the
        budget is spent and the caller should raise ``error``."""
        if self.skipped >= self.allowed:
            return False
        self.skipped += 1
        print(f"cctr: warning: {error.detail}; skipping the step ({self.skipped} of {self.allowed} allowed)",
              file=self._stream or sys.stderr)
        return True
