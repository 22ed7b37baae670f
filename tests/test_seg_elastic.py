"""Randomly deformed copies of labeled samples (seg.elastic), the control of the synthesised
samples: the field has the size asked for, image and label move together, a resumed run draws
the same fields, and a supervised run trains on them."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cctr.seg.config import TrainConfig
from cctr.seg.elastic import ElasticConfig, ElasticSamples, deform, smooth_noise
from cctr.seg.slices import SliceBatch
from cctr.seg.train import train
from test_seg_diagnostics import _cfg, _dataset


def _batch(labeled: int = 3, unlabeled: int = 2, hw: tuple[int, int] = (32, 40)) -> SliceBatch:
    g = torch.Generator().manual_seed(0)
    B = labeled + unlabeled
    rows, cols = torch.meshgrid(torch.arange(hw[0]), torch.arange(hw[1]), indexing="ij")
    disc = ((rows - hw[0] / 2) ** 2 + (cols - hw[1] / 2) ** 2 < 60).long()
    label = torch.stack([disc + (rows > 20).long() * (b % 2) for b in range(B)])
    label[labeled:] = -1
    image = label.clamp_min(0).float()[:, None] + 0.01 * torch.rand((B, 1, *hw), generator=g)
    return SliceBatch(image, label, torch.arange(B) < labeled, [f"c{b}" for b in range(B)],
                      torch.zeros(B, dtype=torch.int64), torch.eye(3).repeat(B, 1, 1))


def test_the_field_has_the_asked_length_and_a_wider_kernel_makes_it_smoother():
    g = torch.Generator().manual_seed(1)
    narrow = smooth_noise(4, (48, 48), 1.0, 2.5, g)
    wide = smooth_noise(4, (48, 48), 6.0, 2.5, g)
    assert narrow.shape == (4, 48, 48, 2)
    for disp in (narrow, wide):
        torch.testing.assert_close(disp.pow(2).sum(-1).mean(dim=(1, 2)).sqrt(), torch.full((4,), 2.5))
    step = lambda d: (d[:, 1:] - d[:, :-1]).abs().mean()   # neighbour differences along rows
    assert step(wide) < 0.3 * step(narrow)
    with pytest.raises(ValueError, match="too wide"):
        smooth_noise(1, (8, 8), 3.0, 1.0, g)


def test_deform_reads_at_pixel_plus_displacement_and_keeps_label_and_image_together():
    batch = _batch()
    image, label = batch.image[:3], batch.label[:3]
    same_image, same_label = deform(image, label, torch.zeros(3, 32, 40, 2))
    torch.testing.assert_close(same_image, image, atol=1e-5, rtol=0)
    assert torch.equal(same_label, label)
    shift = torch.zeros(3, 32, 40, 2)
    shift[..., 0], shift[..., 1] = 2.0, -3.0      # read 2 rows below, 3 columns to the left
    moved_image, moved_label = deform(image, label, shift)
    torch.testing.assert_close(moved_image[:, :, :-2, 3:], image[:, :, 2:, :-3], atol=1e-5, rtol=0)
    assert torch.equal(moved_label[:, :-2, 3:], label[:, 2:, :-3])
    assert bool((moved_image[:, :, -2:] == 0).all()) and bool((moved_label[:, -2:] == 0).all())   # padded as the sampler pads
    # a smooth random field: wherever the image is one class's (image = label + noise), the label is that class
    g = torch.Generator().manual_seed(3)
    warped_image, warped_label = deform(image, label, smooth_noise(3, (32, 40), 3.0, 2.0, g))
    pure = (warped_image[:, 0] - warped_image[:, 0].round()).abs() < 0.02
    assert float(pure.float().mean()) > 0.8
    assert torch.equal(warped_label[pure], warped_image[:, 0].round().long()[pure])


def test_the_hook_copies_the_first_labeled_samples_the_same_again_at_the_same_step():
    batch = _batch()
    hook = ElasticSamples(ElasticConfig(weight=0.5, samples=2, rms_px=1.5, sigma_px=2.0), seed=4)
    extra = hook.extra_samples(7, batch)
    assert extra.image.shape == (2, 1, 32, 40) and extra.weight == 0.5 and bool((extra.label >= 0).all())
    assert hook.metrics()["rms_px"] == pytest.approx(1.5, rel=1e-4)
    torch.testing.assert_close(hook.extra_samples(7, batch).image, extra.image, atol=0, rtol=0)
    assert not torch.equal(hook.extra_samples(8, batch).image, extra.image)
    assert not torch.equal(ElasticSamples(hook.cfg, seed=5).extra_samples(7, batch).image, extra.image)
    # the copies are of labeled rows 0 and 1, which differ (row 1 has its lower part as class 2)
    assert int(extra.label[1].max()) == 2 and int(extra.label[0].max()) == 1


def test_the_options_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="elastic"):
        ElasticConfig(samples=0)
    with pytest.raises(ValueError, match="elastic.sigma_px"):
        replace(TrainConfig(), image_size=(16, 16), elastic=ElasticConfig(weight=1.0, sigma_px=6.0))


def test_a_supervised_run_trains_on_the_deformed_copies_only_when_their_weight_is_positive(tmp_path):
    dataset, split = _dataset(tmp_path, hide_unlabeled=True)
    base = replace(_cfg(tmp_path), method="supervised", iterations=2, diag_every=0)
    for name, weight in (("on", 1.0), ("off", 0.0)):
        train(replace(base, out_dir=str(tmp_path / name), elastic=ElasticConfig(weight=weight, sigma_px=2.0)),
              dataset, split, progress=False)
    events = {}
    for name in ("on", "off"):
        events[name] = EventAccumulator(str(tmp_path / name / "tb"))
        events[name].Reload()
    on = events["on"].Tags()["scalars"]
    assert "loss/a/elastic" in on and "elastic/rms_px" in on
    assert events["on"].Scalars("loss/a/elastic")[-1].value > 0
    assert not any("elastic" in t for t in events["off"].Tags()["scalars"])
