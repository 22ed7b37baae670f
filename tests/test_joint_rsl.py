"""RSL: the warped atlas label lines up with the image pixel for pixel after resize and
augmentation, and the loss follows it (weights, ramp, confidence)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fakes import ShiftBackend
from cctr.joint.config import JointConfig
from cctr.joint.gate import GateConfig, RegistrationGate
from cctr.joint.guidance import Guidance
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.rsl import RegistrationSupervision, RSLConfig, registration_targets, weighted_ce_dice
from cctr.reg.field import CanonicalField, Field
from cctr.reg.spec import BackendSpec
from cctr.seg.config import apply_overrides
from cctr.seg.data.case import Case, spacing_affine
from cctr.seg.slices import AugmentConfig, SliceSampler, prepare_volume, resample_slice
from cctr.seg.students import StudentOutput

CLASSES = ("background", "RV", "MYO", "LV")
SHIFT = (0, 3, -2)  # unlabeled voxel (z, y, x) corresponds to labeled voxel (z, y + 3, x - 2)


def make_case(case_id: str, image: np.ndarray, label: np.ndarray | None) -> Case:
    return Case(case_id=case_id, patient_id=case_id, image=image.astype(np.float32), label=label,
                spacing=(6.0, 1.4, 1.4), affine=spacing_affine((6.0, 1.4, 1.4)), sources=(), class_names=CLASSES)


def anatomy(shape=(3, 30, 34)) -> tuple[np.ndarray, np.ndarray]:
    """A labeled volume: nested ellipses (LV in MYO) beside an RV blob, varying with z."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    lab = np.zeros(shape, np.uint8)
    r = ((y - 15) / (8 - z)) ** 2 + ((x - 19) / 7.0) ** 2
    lab[r < 1.0] = 2
    lab[r < 0.45] = 3
    lab[(((y - 14) / 5.0) ** 2 + ((x - 8) / 3.0) ** 2 < 1.0) & (lab == 0)] = 1
    image = lab * 0.3 + 0.05 * np.random.default_rng(0).random(shape)
    return image, lab


def shifted(volume: np.ndarray, shift=SHIFT) -> np.ndarray:
    """``out[p] = volume[p + shift]``, 0 where p + shift is outside."""
    out = np.zeros_like(volume)
    src = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, volume.shape))
    dst = tuple(slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, volume.shape))
    out[dst] = volume[src]
    return out


@pytest.fixture
def setup():
    image, label = anatomy()
    atlas = make_case("lab", image, label)
    target_label = shifted(label)
    target = make_case("unl", shifted(image), None)
    guidance = Guidance(RegistrationOracle([atlas], [target], ShiftBackend(SHIFT), OracleConfig()))
    sampler = SliceSampler([prepare_volume(atlas)], [prepare_volume(target, with_label=False)],
                           labeled_batch=2, unlabeled_batch=4, out_hw=(24, 24),
                           augment=AugmentConfig(rotation_deg=30.0, flip=True, zoom=(0.8, 1.25)), seed=5)
    return guidance, sampler, target_label


def test_warped_label_lines_up_with_the_images_own_label_after_augmentation(setup):
    guidance, sampler, target_label = setup
    num_classes = len(CLASSES)
    truth_onehot = np.stack([(target_label == c) for c in range(num_classes)]).astype(np.float32)
    # Target voxels whose corresponding atlas point is inside the atlas (the rest has no registration label).
    covered = shifted(np.ones_like(target_label, dtype=np.float32))
    checked = 0
    for _ in range(3):
        batch = sampler.next_batch()
        targets = registration_targets(batch, guidance, step=0)
        assert targets.index.tolist() == [2, 3, 4, 5]
        for k, b in enumerate(targets.index.tolist()):
            z, m = int(batch.slice_index[b]), batch.to_volume[b]
            truth = resample_slice(torch.from_numpy(truth_onehot), z, m, (24, 24), "linear")
            full = resample_slice(torch.from_numpy(covered), z, m, (24, 24), "linear") > 0.999
            torch.testing.assert_close(targets.probs[k][:, full], truth[:, full], atol=2e-3, rtol=0)
            assert torch.equal(targets.label[k][full], truth.argmax(0)[full])
            assert torch.all(targets.weight[k][full] == 1.0)
            # Pixels no atlas covers carry no loss.
            none = resample_slice(torch.from_numpy(covered), z, m, (24, 24), "linear") < 0.5
            assert torch.all(targets.weight[k][none] == 0.0)
            checked += int(full.sum())
    assert checked > 500


def test_alignment_needs_the_field_not_just_the_atlas_label(setup):
    """Control: without the registration the atlas label does NOT line up, so the test above can fail."""
    guidance, sampler, target_label = setup
    oracle = guidance.oracle
    backend = type("Id", (), {"spec": BackendSpec("fake-identity", "identity"),
                              "register_many": lambda self, p: [CanonicalField.of_dense(Field.identity(f.shape))
                                                                for f, *_ in p]})()
    identity = RegistrationOracle(list(oracle.atlases.values()), list(oracle.targets.values()), backend, OracleConfig())
    batch = sampler.next_batch()
    good = registration_targets(batch, guidance, 0)
    bad = registration_targets(batch, Guidance(identity), 0)
    assert (good.label != bad.label).float().mean() > 0.05


def test_weighted_loss_ignores_zero_weight_pixels_and_is_small_when_right():
    label = torch.randint(0, 4, (2, 8, 8))
    right = 20.0 * F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    weight = torch.ones(2, 8, 8)
    weight[:, :, :3] = 0.0
    assert float(weighted_ce_dice(right, label, weight)) < 1e-3
    wrong_where_ignored = right.clone()
    wrong_where_ignored[:, :, :, :3] = right[:, :, :, :3].roll(1, dims=1)
    assert float(weighted_ce_dice(wrong_where_ignored, label, weight)) < 1e-3
    assert float(weighted_ce_dice(wrong_where_ignored, label, torch.ones(2, 8, 8))) > 0.5
    assert float(weighted_ce_dice(right, label, torch.zeros(2, 8, 8))) == 0.0


def zero_students(batch) -> tuple[dict, dict]:
    """Two students' all-zero logits ``(B, 4, 24, 24)`` (leaves that take gradients) and their outputs."""
    logits = {name: torch.zeros(batch.image.shape[0], 4, 24, 24, requires_grad=True) for name in ("a", "b")}
    return logits, {name: StudentOutput(logits=l, features=l, embedding=l) for name, l in logits.items()}


def test_term_gives_each_student_a_ramped_loss_on_unlabeled_samples_only(setup):
    guidance, sampler, _ = setup
    batch = sampler.next_batch()
    logits, outputs = zero_students(batch)
    term = RegistrationSupervision(guidance, RSLConfig(weight=0.1), rampup_steps=40)
    early, mid, late = term.losses(0, batch, outputs), term.losses(20, batch, outputs), term.losses(60, batch, outputs)
    assert set(late) == {"a", "b"}
    value = {k: {n: float(t.detach()) for n, t in d.items()} for k, d in (("early", early), ("mid", mid), ("late", late))}
    assert value["early"]["a"] == pytest.approx(value["late"]["a"] * math.exp(-5), rel=1e-4)
    assert value["mid"]["b"] == pytest.approx(value["late"]["b"] * math.exp(-5 * 0.25), rel=1e-4)
    late["a"].backward()
    grad = logits["a"].grad.abs().sum(dim=(1, 2, 3))
    assert torch.all(grad[:2] == 0) and torch.all(grad[2:] > 0)
    assert term.last_targets is not None and term.last_targets.label.shape == (4, 24, 24)


def test_max_prob_confidence_dims_label_boundaries(setup):
    guidance, sampler, _ = setup
    batch = sampler.next_batch()
    plain = registration_targets(batch, guidance, 0, "none")
    soft = registration_targets(batch, guidance, 0, "max-prob")
    inside = plain.weight == 1.0
    assert torch.all(soft.weight[inside] <= 1.0)
    assert (soft.weight[inside] < 0.9).any() and (soft.weight[inside] == 1.0).any()
    with pytest.raises(ValueError, match="confidence"):
        RSLConfig(confidence="entropy")


def test_rsl_logs_the_dice_of_its_targets_against_hidden_labels_only_when_it_has_them(setup):
    guidance, sampler, target_label = setup
    batch = sampler.next_batch()
    logits = torch.zeros(batch.image.shape[0], len(CLASSES), 24, 24, requires_grad=True)
    outputs = {"a": StudentOutput(logits, logits, logits)}
    exact = RegistrationSupervision(guidance, RSLConfig(), hidden_labels={"unl": target_label})
    loss = exact.losses(0, batch, outputs)["a"]
    dice = exact.metrics()["target_dice_hidden"]
    assert dice > 0.97  # the fake backend's shift is the true one
    # the hidden label only feeds the metric: the loss is the same without it
    blind = RegistrationSupervision(guidance, RSLConfig())
    assert torch.equal(blind.losses(0, batch, outputs)["a"], loss) and blind.metrics() == {}
    image, label = anatomy()
    cases = [make_case("lab", image, label), make_case("unl", shifted(image), None)]
    wrong = RegistrationOracle(cases[:1], cases[1:], ShiftBackend((0, 0, 0)), OracleConfig())
    off = RegistrationSupervision(Guidance(wrong), RSLConfig(), hidden_labels={"unl": target_label})
    off.losses(0, batch, outputs)
    assert off.metrics()["target_dice_hidden"] < dice - 0.05


@pytest.mark.parametrize("gone", ["rsl.schedule=fade-out", "rsl.fade_fraction=0.5", "rsl.pixels=disagree",
                                  "gate.terms=rsl+reps"])
def test_rsl_and_gate_options_that_were_dropped_are_refused_as_unknown(gone):
    # RSL ramps up on every pixel, and the gate gates RSL only
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(JointConfig(), [gone])


def test_the_validation_gate_keeps_rsl_from_a_student_that_beats_the_registration(setup):
    guidance, sampler, _ = setup
    batch = sampler.next_batch()
    logits, outputs = zero_students(batch)
    gate = RegistrationGate(lambda: 0.7)
    assert gate.is_open("a") and gate.is_open("b")
    term = RegistrationSupervision(guidance, RSLConfig(weight=0.1), gate=gate)
    before = term.losses(5, batch, outputs)
    assert float(before["a"].detach()) > 0 and float(before["b"].detach()) > 0   # no validation yet: both below the registration

    logged = gate.validate(100, {"a": {"dice": 0.8, "hd95": 3.0}, "b": {"dice": 0.6, "hd95": 5.0}})
    assert logged == {"registration_dice": 0.7, "open_a": 0.0, "open_b": 1.0}
    assert not gate.is_open("a") and gate.is_open("b")
    after = term.losses(5, batch, outputs)
    assert float(after["a"].detach()) == 0.0 and float(after["b"].detach()) == pytest.approx(float(before["b"].detach()))
    after["a"].backward()
    assert not logits["a"].grad.any()

    resumed = RegistrationGate(lambda: 0.7)
    resumed.load_state_dict(gate.state_dict())
    assert float(RegistrationSupervision(guidance, RSLConfig(weight=0.1), gate=resumed).losses(5, batch, outputs)["a"].detach()) == 0.0
    gate.validate(200, {"a": {"dice": 0.65}, "b": {"dice": 0.7}})   # reaching the registration closes it too
    assert gate.closed == {"b"}
    all_closed = gate.validate(300, {"a": {"dice": 0.9}, "b": {"dice": 0.9}})
    assert not any(all_closed[k] for k in ("open_a", "open_b"))
    assert term.losses(5, batch, outputs).keys() == {"a", "b"} and term.last_targets is None   # nothing queried


def test_gate_options_are_checked():
    assert GateConfig().mode == "validation" and GateConfig(mode="none").mode == "none"
    with pytest.raises(ValueError, match="gate.mode"):
        GateConfig(mode="sometimes")
