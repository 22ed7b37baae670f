"""Synthesised samples: the atlas image and label carried onto an unlabeled sample's pixels stay
in register with each other whatever the registration, and equal the target's own image and
label when the registration is exact (a cctr run with them: tests/test_joint_methods.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import ShiftBackend
from cctr.joint.config import JointConfig
from cctr.joint.guidance import Guidance
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.rsl import RegistrationSupervision, RSLConfig
from cctr.joint.synth import SynthConfig, WarpedAtlasSamples
from cctr.seg.config import apply_overrides
from cctr.seg.slices import AugmentConfig, SliceSampler, normalize_intensity, prepare_volume, resample_slice, sample_voxels
from test_joint_rsl import CLASSES, SHIFT, anatomy, make_case, shifted, zero_students

C = len(CLASSES)


def _setup(registration_shift):
    """An atlas whose image is 0.3 * label + noise in [0, 0.05), a target that is the atlas
    shifted by SHIFT, and an oracle whose registration shifts by ``registration_shift``."""
    image, label = anatomy()
    atlas = make_case("lab", image, label)
    target = make_case("unl", shifted(image), None)
    oracle = RegistrationOracle([atlas], [target], ShiftBackend(registration_shift), OracleConfig())
    sampler = SliceSampler([prepare_volume(atlas, "none")], [prepare_volume(target, "none", with_label=False)],
                           labeled_batch=2, unlabeled_batch=4, out_hw=(24, 24),
                           augment=AugmentConfig(rotation_deg=30.0, flip=True, zoom=(0.8, 1.25)), seed=5)
    hook = WarpedAtlasSamples(Guidance(oracle), {"lab": normalize_intensity(image, "none")},
                              SynthConfig(weight=0.5, samples=3))
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
        fld = hook.guidance.oracle.points_field(batch.case_id[b], "lab", voxels.numpy())
        pure = torch.from_numpy(fld.warp_onehot(label, C)[:, 0, 0].max(axis=0) > 0.999).reshape(H, W)
        pure &= torch.from_numpy(fld.inside()[0, 0]).reshape(H, W)
        img, lab = extra.image[k, 0][pure], extra.label[k][pure].float()
        assert pure.sum() > 100 and float((img - 0.3 * lab).min()) >= -1e-5 and float((img - 0.3 * lab).max()) < 0.05
        true_label = resample_slice(torch.from_numpy(shifted(label).astype(np.float32)), int(batch.slice_index[b]),
                                    batch.to_volume[b], (H, W), "nearest").long()
        wrong += int((extra.label[k] != true_label).sum())
    assert wrong > 50    # the labels are not the target's: the registration is off


def test_rsl_and_the_synthesised_samples_read_one_guidance_per_step():
    """A step maps its samples and asks the oracle for their Fields once, whichever hook asks
    first; the next step asks again (a coupled net changes its Fields between steps)."""
    hook, sampler, _, _ = _setup(SHIFT)
    guidance = hook.guidance
    asked = []
    real = guidance.oracle.points_field
    guidance.oracle.points_field = lambda *a: asked.append(a[0]) or real(*a)
    rsl = RegistrationSupervision(guidance, RSLConfig(weight=0.1))
    batch = sampler.next_batch()
    _, outputs = zero_students(batch)
    hook.extra_samples(3, batch)
    rsl.losses(3, batch, outputs)
    assert len(asked) == 4   # the batch's four unlabeled samples, one atlas each
    assert sorted(guidance.of_batch(3, batch)) == [2, 3, 4, 5]
    rsl.losses(4, batch, outputs)
    assert len(asked) == 8


def test_the_options_are_checked_and_every_atlas_needs_its_image():
    with pytest.raises(ValueError, match="synth.weight"):
        SynthConfig(weight=-1.0)
    with pytest.raises(ValueError, match="synth.samples"):
        SynthConfig(samples=0)
    # the atlas's own appearance, unaugmented and deformed, always: those options are gone
    for gone in ("synth.appearance=target", "synth.augment=true", "synth.deformation=false"):
        with pytest.raises(ValueError, match="unknown option"):
            apply_overrides(JointConfig(), [gone])
    hook, *_ = _setup(SHIFT)
    with pytest.raises(ValueError, match=r"missing \['lab'\]"):
        WarpedAtlasSamples(hook.guidance, {}, SynthConfig(weight=1.0))
