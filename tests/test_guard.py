"""Non-finite guards (``cctr.seg.guard``, ``cctr.reg.guard``): the error names the step and the term or
parameter; a state holding NaN is refused before it is saved; a bad-step budget skips a few."""
from __future__ import annotations

import io

import pytest
import torch

import cctr.reg.guard
import cctr.seg.guard


@pytest.mark.parametrize("guard", [cctr.seg.guard, cctr.reg.guard])
def test_a_non_finite_loss_term_is_named_with_its_step(guard):
    guard.check_losses(3, {"a/sup": torch.tensor(0.5), "a/cps": torch.tensor(1.0)})
    with pytest.raises(guard.NonFiniteError, match=r"step 7: loss term 'a/cps' is NaN"):
        guard.check_losses(7, {"a/sup": torch.tensor(0.5), "a/cps": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match=r"step 8: loss term 'similarity' is \+?inf"):
        guard.check_losses(8, {"similarity": torch.tensor(float("inf"))})


@pytest.mark.parametrize("guard", [cctr.seg.guard, cctr.reg.guard])
def test_a_non_finite_gradient_is_named(guard):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net(torch.ones(1, 2)).sum().backward()
    guard.check_gradients(1, net.named_parameters())
    net[1].weight.grad[0, 0] = float("inf")
    with pytest.raises(guard.NonFiniteError, match=r"step 2: gradient of '1.weight'"):
        guard.check_gradients(2, net.named_parameters())


@pytest.mark.parametrize("guard", [cctr.seg.guard, cctr.reg.guard])
def test_a_state_with_nan_weights_is_refused_but_a_minus_inf_best_score_is_not(guard):
    good = {"students": {"a": {"w": torch.ones(3)}}, "rng": torch.zeros(4, dtype=torch.uint8), "best_score": float("-inf")}
    guard.check_state_finite(good, "last.pt")
    bad = {"students": {"a": {"w": torch.tensor([1.0, float("nan")])}}, "step": 3}
    with pytest.raises(guard.NonFiniteError, match=r"last.pt: not written, 'students.a.w' holds NaN"):
        guard.check_state_finite(bad, "last.pt")


def test_the_bad_step_budget_skips_then_stops_and_warns():
    stream = io.StringIO()
    budget = cctr.seg.guard.BadStepBudget(2, stream=stream)
    err = cctr.seg.guard.NonFiniteError("step 4: loss term 'x' is NaN")
    assert budget.absorb(err) and budget.absorb(err) and not budget.absorb(err)
    assert "step 4: loss term 'x' is NaN; skipping the step (2 of 2 allowed)" in stream.getvalue()
    assert not cctr.seg.guard.BadStepBudget().absorb(err)  # off by default
    with pytest.raises(ValueError):
        cctr.seg.guard.BadStepBudget(-1)
