"""Non-finite checks for registration training (``seg.guard`` has the same; the packages stay
independent): a NaN or inf loss term or gradient stops training naming the step and the term,
and a checkpoint holding NaN or inf is never written."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import torch

ADVICE = "; training stopped (lower the learning rate, or check the input data)"


class NonFiniteError(ValueError):
    """NaN or inf found (a ValueError: the CLI shows one line). ``detail``: without advice."""

    def __init__(self, detail: str, advice: str = ADVICE) -> None:
        super().__init__(detail + advice)
        self.detail = detail


def check_losses(step: int, terms: Mapping[str, torch.Tensor]) -> None:
    """Raise naming ``step`` and the first non-finite term of ``terms`` (one device sync)."""
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()]).cpu()
    if bool(torch.isfinite(values).all()):
        return
    name, v = next((n, v) for n, v in zip(terms, values.tolist()) if not math.isfinite(v))
    raise NonFiniteError(f"step {step}: loss term {name!r} is {'NaN' if math.isnan(v) else 'inf'}")


def check_gradients(step: int, named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> None:
    """Raise naming ``step`` and the first parameter whose gradient holds NaN or inf."""
    named = [(n, p.grad) for n, p in named_parameters if p.grad is not None]
    if not named:
        return
    ok = torch.stack([torch.isfinite(g).all() for _, g in named]).cpu()
    if not bool(ok.all()):
        raise NonFiniteError(f"step {step}: gradient of {named[int((~ok).nonzero()[0])][0]!r} is not finite")


def first_non_finite(state: Any, prefix: str = "") -> Optional[str]:
    """Dotted key of the first floating tensor or float holding NaN/inf in a nested state."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return (prefix or "<tensor>") if bad else None
    if isinstance(state, float):
        return None if math.isfinite(state) else (prefix or "<value>")
    items = state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def check_state_finite(state: Mapping[str, Any], what: str, allow: Iterable[str] = ("best_score",)) -> None:
    """Refuse to save ``state`` when anything in it but the top-level keys ``allow`` (a best
    score of -inf before any validation is legitimate) is not finite."""
    bad = first_non_finite({k: v for k, v in state.items() if k not in set(allow)})
    if bad is not None:
        raise NonFiniteError(f"{what}: not written, {bad!r} holds NaN or inf", advice=" (training diverged)")
