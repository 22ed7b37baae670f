"""Synthesised samples: the atlas image and label carried onto an unlabeled sample's pixels stay
in register with each other whatever the registration, and equal the target's own image and
label when the registration is exact (a cctr run with them: tests/test_joint_methods.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import ShiftBackend
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.synth import MIN_CLASS_PIXELS, SynthConfig, WarpedAtlasSamples, carry_appearance
from cctr.seg.slices import AugmentConfig, SliceSampler, normalize_intensity, prepare_volume, resample_slice, sample_voxels
from test_joint_rsl import CLASSES, SHIFT, anatomy, make_case, shifted

C = len(CLASSES)


def _setup(registration_shift):
    """An atlas whose image is 0.3 * label + noise in [0, 0.05), a target that is the atlas
    shifted by SHIFT, and an oracle whose registration shifts by ``registration_shift``."""
    image, label = anatomy()
    atlas = make_case("lab", image, label)
    target = make_case("unl", shifted(image), None)
    oracle = RegistrationOracle([atlas], [target], OracleConfig(), backend=ShiftBackend(registration_shift))
    sampler = SliceSampler([prepare_volume(atlas, "none")], [prepare_volume(target, "none", with_label=False)],
                           labeled_batch=2, unlabeled_batch=4, out_hw=(24, 24),
                           augment=AugmentConfig(rotation_deg=30.0, flip=True, zoom=(0.8, 1.25)), seed=5)
    hook = WarpedAtlasSamples(oracle, {"lab": normalize_intensity(image, "none")}, SynthConfig(weight=0.5, samples=3))
    return hook, sampler, image, label


def test_an_exact_registration_synthesises_the_unlabeled_sample_itself_with_its_true_label():
    hook, sampler, image, label = _setup(SHIFT)
    target_image, target_label = shifted(image).astype(np.float32), shifted(label)
    covered = shifted(np.ones_like(image))   # target voxels whose atlas point exists
    for step in range(3):
        batch = sampler.next_batch()
        extra = hook.extra_samples(step, batch)
        assert extra.image.shape == (3, 1, 24, 24) and extra.label.dtype == torch.int64 and extra.weight == 0.5
        for k, b in enumerate((2, 3, 4)):      # the first three unlabeled samples, in batch order
            z, m = int(batch.slice_index[b]), batch.to_volume[b]
            full = resample_slice(torch.from_numpy(covered), z, m, (24, 24), "linear") > 0.999
            want_image = resample_slice(torch.from_numpy(target_image), z, m, (24, 24), "linear")
            want_label = resample_slice(torch.from_numpy(target_label.astype(np.float32)), z, m, (24, 24), "nearest")
            torch.testing.assert_close(extra.image[k, 0][full], want_image[full], atol=1e-4, rtol=0)
            sure = full & (resample_slice(torch.from_numpy(target_label.astype(np.float32)), z, m, (24, 24),
                                          "linear") == want_label)   # away from label boundaries
            assert sure.sum() > 100 and torch.equal(extra.label[k][sure], want_label[sure].long())
    assert 0.5 < hook.metrics()["inside"] <= 1.0


def test_a_wrong_registration_still_gives_pairs_in_register():
    """RSL's target is wrong where the registration is; the synthesised label is not wrong for
    its own image: wherever the interpolated label is pure, the image is 0.3 * label + noise."""
    hook, sampler, image, label = _setup((0, 6, 3))       # not the true SHIFT
    batch = sampler.next_batch()
    extra = hook.extra_samples(0, batch)
    H, W = batch.image.shape[-2:]
    wrong = 0
    for k, b in enumerate((2, 3, 4)):
        voxels = sample_voxels(batch, b)
        fld = hook.oracle.points_field(batch.case_id[b], "lab", voxels.numpy())
        pure = torch.from_numpy(fld.warp_onehot(label, C)[:, 0, 0].max(axis=0) > 0.999).reshape(H, W)
        pure &= torch.from_numpy(fld.inside()[0, 0]).reshape(H, W)
        img, lab = extra.image[k, 0][pure], extra.label[k][pure].float()
        assert pure.sum() > 100 and float((img - 0.3 * lab).min()) >= -1e-5 and float((img - 0.3 * lab).max()) < 0.05
        true_label = resample_slice(torch.from_numpy(shifted(label).astype(np.float32)), int(batch.slice_index[b]),
                                    batch.to_volume[b], (H, W), "nearest").long()
        wrong += int((extra.label[k] != true_label).sum())
    assert wrong > 50    # the labels are not the target's: the registration is off


def test_without_the_deformation_the_samples_come_from_where_the_placement_alone_puts_them():
    """The fake backend's shift is all displacement (its placements are the identity), so the
    control synthesises the atlas at the unlabeled sample's own voxels: the atlas unshifted."""
    deformed_hook, sampler, image, label = _setup(SHIFT)
    bare_hook = WarpedAtlasSamples(deformed_hook.oracle, deformed_hook.images,
                                   SynthConfig(weight=0.5, samples=3, deformation=False))
    batch = sampler.next_batch()
    extra, deformed = bare_hook.extra_samples(0, batch), deformed_hook.extra_samples(0, batch)
    for k, b in enumerate((2, 3, 4)):
        z, m = int(batch.slice_index[b]), batch.to_volume[b]
        full = resample_slice(torch.from_numpy(np.ones_like(image)), z, m, (24, 24), "linear") > 0.999
        want_image = resample_slice(torch.from_numpy(normalize_intensity(image, "none")), z, m, (24, 24), "linear")
        assert full.sum() > 100
        torch.testing.assert_close(extra.image[k, 0][full], want_image[full], atol=1e-4, rtol=0)
    assert not torch.equal(extra.label, deformed.label)


def test_the_options_are_checked_and_every_atlas_needs_its_image():
    with pytest.raises(ValueError, match="synth.weight"):
        SynthConfig(weight=-1.0)
    with pytest.raises(ValueError, match="synth.samples"):
        SynthConfig(samples=0)
    with pytest.raises(ValueError, match="synth.appearance"):
        SynthConfig(appearance="mean")
    hook, *_ = _setup(SHIFT)
    with pytest.raises(ValueError, match=r"missing \['lab'\]"):
        WarpedAtlasSamples(hook.oracle, {}, SynthConfig(weight=1.0))


OFFSETS = np.array([0.0, 0.2, -0.15, 0.1], np.float32)   # the target's intensity per class minus the atlas's


def test_carried_appearance_moves_each_class_to_the_target_and_leaves_a_class_too_small_to_measure():
    image, label = anatomy()
    atlas_image, lab = image[0].astype(np.float32), label[0]
    target = atlas_image + OFFSETS[lab]
    out = carry_appearance(atlas_image, lab, target, np.ones_like(lab, bool), C)
    np.testing.assert_allclose(out, target, atol=1e-6)
    # pixels where the target does not exist count for nothing: the RV (class 1) keeps too few
    valid = np.ones_like(lab, bool)
    rv = np.argwhere(lab == 1)
    valid[tuple(rv[MIN_CLASS_PIXELS // 2:].T)] = False
    out = carry_appearance(atlas_image, lab, np.where(valid, target, 5.0), valid, C)
    np.testing.assert_allclose(out[lab == 1], atlas_image[lab == 1], atol=1e-6)
    np.testing.assert_allclose(out[lab != 1], target[lab != 1], atol=1e-6)


def test_with_the_targets_appearance_an_exact_registration_synthesises_the_target_and_a_wrong_one_keeps_the_label():
    """The target is the shifted atlas with other intensities per class: with an exact
    registration the synthesised image is the unlabeled sample itself (inside the label's
    pure pixels), with a wrong one its label is still the atlas's and the image follows it.
    The anatomy is doubled in plane so that the thin myocardium has enough pixels to measure."""
    _, label = anatomy()
    label = label.repeat(2, axis=1).repeat(2, axis=2)
    image = label * 0.3 + 0.05 * np.random.default_rng(1).random(label.shape)
    atlas = make_case("lab", image, label)
    target_image = shifted(image + OFFSETS[label])
    target = make_case("unl", target_image, None)
    for shift, exact in ((SHIFT, True), ((0, 6, 3), False)):
        oracle = RegistrationOracle([atlas], [target], OracleConfig(), backend=ShiftBackend(shift))
        sampler = SliceSampler([prepare_volume(atlas, "none")], [prepare_volume(target, "none", with_label=False)],
                               labeled_batch=2, unlabeled_batch=4, out_hw=(48, 48),
                               augment=AugmentConfig(rotation_deg=30.0, contrast=(1.0, 1.0), brightness=(0.0, 0.0)), seed=3)
        hook = WarpedAtlasSamples(oracle, {"lab": image.astype(np.float32)}, SynthConfig(samples=2, appearance="target"))
        batch = sampler.next_batch()
        extra = hook.extra_samples(0, batch)
        H, W = batch.image.shape[-2:]
        for k, b in enumerate((2, 3)):
            voxels = sample_voxels(batch, b)
            fld = oracle.points_field(batch.case_id[b], "lab", voxels.numpy())
            pure = torch.from_numpy(fld.warp_onehot(label, C)[:, 0, 0].max(axis=0) > 0.999).reshape(H, W)
            pure &= torch.from_numpy(fld.inside()[0, 0]).reshape(H, W)
            img, lab = extra.image[k, 0][pure], extra.label[k][pure]
            if exact:   # where the target's voxels all have an atlas point (its zero fill biases the median slightly)
                z, m = int(batch.slice_index[b]), batch.to_volume[b]
                full = resample_slice(torch.from_numpy(shifted(np.ones_like(image))), z, m, (H, W), "linear")[pure] > 0.999
                torch.testing.assert_close(img[full], batch.image[b, 0][pure][full], atol=1e-3, rtol=0)
            else:   # the atlas's image moved by the class offsets the target's medians gave
                atlas_img = torch.from_numpy(fld.warp_image(image.astype(np.float32))[0, 0]).reshape(H, W)[pure]
                moved = img - atlas_img
                for c in lab.unique().tolist():
                    assert float(moved[lab == c].std()) < 1e-5   # one shift per class: texture and edges kept
                assert float((img - atlas_img).abs().max()) > 0.05


def test_augmented_synthesised_images_take_the_trainers_intensity_ranges_the_same_again_at_the_same_step():
    """``synth.augment``: each synthesised image is the unaugmented one times a contrast plus a
    brightness from the trainer's ranges; the draw depends on (seed, step) only, so a resumed run
    makes the same samples, and the labels do not move."""
    plain, sampler, image, _ = _setup(SHIFT)
    ranges = AugmentConfig(contrast=(0.5, 0.6), brightness=(2.0, 3.0))
    images = {"lab": normalize_intensity(image, "none")}
    hook = WarpedAtlasSamples(plain.oracle, images, SynthConfig(weight=0.5, samples=3, augment=True), ranges, seed=7)
    off = WarpedAtlasSamples(plain.oracle, images, SynthConfig(weight=0.5, samples=3, augment=False), ranges, seed=7)
    batch = sampler.next_batch()
    base = plain.extra_samples(4, batch)
    torch.testing.assert_close(off.extra_samples(4, batch).image, base.image, atol=0, rtol=0)
    got = hook.extra_samples(4, batch)
    assert torch.equal(got.label, base.label)
    draws = set()
    for k in range(3):
        x, y = base.image[k, 0].flatten().double(), got.image[k, 0].flatten().double()
        a = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        b = float(y.mean() - a * x.mean())
        assert 0.5 <= a <= 0.6 and 2.0 <= b <= 3.0
        torch.testing.assert_close(y, a * x + b, atol=1e-4, rtol=0)
        draws.add(round(a, 6))
    assert len(draws) == 3   # one draw per sample
    torch.testing.assert_close(hook.extra_samples(4, batch).image, got.image, atol=0, rtol=0)
    assert not torch.equal(hook.extra_samples(5, batch).image, got.image)
