"""REPS: the memory bank stores and looks up embeddings by volume voxel, and the registration
positive of an unlabeled anchor is the bank's embedding at the registered point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import ShiftBackend
from cctr.joint.config import JointConfig
from cctr.joint.guidance import Guidance
from cctr.joint.memory_bank import BankConfig, MemoryBank
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.reps import RegistrationPositives, label_at, registration_positives
from cctr.seg.config import apply_overrides
from cctr.seg.losses import ExtraKeys, PartAnchors
from cctr.seg.slices import pixel_voxels
from cctr.seg.data.case import Case, spacing_affine
from cctr.seg.slices import AugmentConfig, SliceSampler, prepare_volume, resample_slice
from cctr.seg.students import StudentOutput

CLASSES = ("background", "RV", "MYO", "LV")
SHAPE = (5, 40, 44)
SHIFT = (1, 4, -3)
HW = (32, 32)


def code(z, y, x) -> torch.Tensor:
    """A smooth unit 6-vector naming a voxel position: (..., 6)."""
    z, y, x = (torch.as_tensor(v, dtype=torch.float32) for v in (z, y, x))
    parts = [torch.cos(z / 3), torch.sin(z / 3), torch.cos(y / 9), torch.sin(y / 9), torch.cos(x / 9), torch.sin(x / 9)]
    return torch.stack(parts, dim=-1) / np.sqrt(3.0)


def code_volume(shape) -> torch.Tensor:
    """(6, Z, Y, X): ``code`` of every voxel, aligned with the volume."""
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return code(z, y, x).permute(3, 0, 1, 2).contiguous()


def embed(batch, volume_code: torch.Tensor) -> torch.Tensor:
    """What a perfect student would output: the code of each sample pixel's voxel, (B, 6, H, W)."""
    maps = [resample_slice(volume_code, int(batch.slice_index[b]), batch.to_volume[b], HW, "linear", padding="border")
            for b in range(batch.image.shape[0])]
    return torch.nn.functional.normalize(torch.stack(maps), dim=1)


def make_case(case_id, image, label):
    return Case(case_id=case_id, patient_id=case_id, image=image.astype(np.float32), label=label,
                spacing=(8.0, 1.5, 1.5), affine=spacing_affine((8.0, 1.5, 1.5)), sources=(), class_names=CLASSES)


@pytest.fixture
def world():
    rng = np.random.default_rng(2)
    label = (rng.random(SHAPE) > 0.5).astype(np.uint8)
    atlas = make_case("lab", rng.random(SHAPE), label)
    target = make_case("unl", rng.random(SHAPE), None)
    sampler = SliceSampler([prepare_volume(atlas)], [prepare_volume(target, with_label=False)],
                           labeled_batch=3, unlabeled_batch=3, out_hw=HW,
                           augment=AugmentConfig(rotation_deg=25.0, flip=True, zoom=(0.9, 1.3)), seed=11)
    return atlas, target, sampler


def filled_bank(sampler, steps: int, cfg=BankConfig(downsample=2)) -> MemoryBank:
    bank = MemoryBank({"lab": SHAPE[0]}, dim=6, sample_hw=HW, cfg=cfg)
    volume_code = code_volume(SHAPE)
    for _ in range(steps):
        batch = sampler.next_batch()
        lab = batch.is_labeled
        bank.update([c for c, l in zip(batch.case_id, lab) if l], batch.slice_index[lab], batch.to_volume[lab],
                    embed(batch, volume_code)[lab])
    return bank


def test_bank_looks_up_what_was_stored_by_volume_voxel(world):
    _, _, sampler = world
    bank = filled_bank(sampler, steps=8)
    assert bank.filled.all()
    pts = torch.tensor([[z, y, x] for z in range(SHAPE[0]) for y in (12.0, 20.5, 27.25) for x in (14.0, 22.75, 30.0)])
    vec, valid = bank.lookup(torch.zeros(len(pts), dtype=torch.long), pts)
    assert valid.all()
    cos = (vec * code(pts[:, 0], pts[:, 1], pts[:, 2])).sum(dim=1)
    assert cos.min() > 0.99


def test_bank_marks_what_it_cannot_answer(world):
    _, _, sampler = world
    bank = MemoryBank({"lab": SHAPE[0], "other": 3}, dim=6, sample_hw=HW, cfg=BankConfig(max_slice_gap=1.0))
    batch = sampler.next_batch()
    first = batch.is_labeled.nonzero().flatten()[:1]
    z = int(batch.slice_index[first])
    bank.update(["lab"], batch.slice_index[first], batch.to_volume[first], embed(batch, code_volume(SHAPE))[first])
    centre_yx = batch.to_volume[first][0] @ torch.tensor([15.5, 15.5, 1.0])
    queries = torch.tensor([
        [z, centre_yx[0], centre_yx[1]],              # stored slice, centre of its view: valid
        [z + 0.8, centre_yx[0], centre_yx[1]],        # nearest stored slice within the gap: valid
        [z + 2.0 if z + 2 < SHAPE[0] else z - 2.0, centre_yx[0], centre_yx[1]],  # too far from any stored slice
        [z, -30.0, -30.0],                            # outside the stored sample's view
        [1.0, 10.0, 10.0],                            # a case with nothing stored yet
    ])
    vec, valid = bank.lookup(torch.tensor([0, 0, 0, 0, 1]), queries)
    assert valid.tolist() == [True, z + 0.8 <= SHAPE[0] - 0.5, False, False, False]
    assert torch.all(vec[~valid] == 0)
    with pytest.raises(ValueError, match="nobody"):
        bank.case_index(["nobody"])


def test_bank_memory_is_fixed_float16_and_shrinks_with_downsampling():
    big = MemoryBank({"a": 10, "b": 8}, dim=128, sample_hw=(64, 64), cfg=BankConfig(downsample=2))
    small = MemoryBank({"a": 10, "b": 8}, dim=128, sample_hw=(64, 64), cfg=BankConfig(downsample=4))
    assert big.embedding.dtype == torch.float16
    assert big.nbytes == 18 * 32 * 32 * 128 * 2 + 18 + 18 * 9 * 4
    assert small.nbytes < big.nbytes / 3.5


def shifted_guidance(atlas, target, shift=SHIFT) -> Guidance:
    """The registration guidance of a backend that shifts by ``shift``."""
    return Guidance(RegistrationOracle([atlas], [target], ShiftBackend(shift), OracleConfig()))


def shifted_lookup(world, anchor_seed: int):
    """Guidance that shifts by SHIFT, a bank filled over 10 steps, the next batch and 600 of its
    pixels drawn with ``anchor_seed``: what a registration positive is looked up from."""
    atlas, target, sampler = world
    guidance = shifted_guidance(atlas, target)
    bank = filled_bank(sampler, steps=10)
    batch = sampler.next_batch()
    B, (H, W) = batch.image.shape[0], HW
    anchors = torch.randperm(B * H * W, generator=torch.Generator().manual_seed(anchor_seed))[:600]
    return guidance, bank, batch, anchors


def test_registration_positive_is_the_embedding_at_the_registered_point(world):
    atlas, target, _ = world
    guidance, bank, batch, anchors = shifted_lookup(world, anchor_seed=0)
    classes = torch.zeros(600, dtype=torch.long)
    found = registration_positives(batch, PartAnchors(anchors, classes), guidance, bank, step=0)
    vec, valid = found.vectors, found.valid
    b, voxels = pixel_voxels(batch, anchors)
    labeled = batch.is_labeled[b]
    assert not valid[labeled].any()
    there = voxels + torch.tensor(SHIFT, dtype=torch.float32)
    inside = ((there > -0.5) & (there < torch.tensor(SHAPE) - 0.5)).all(dim=1)
    inside &= ((voxels > -0.5) & (voxels < torch.tensor(SHAPE) - 0.5)).all(dim=1)
    assert valid.sum() > 100
    assert not valid[~inside].any()
    expected = code(there[:, 0], there[:, 1], there[:, 2])
    assert (vec[valid] * expected[valid]).sum(dim=1).min() > 0.99
    # Control: an identity registration gives other positives.
    wrong = shifted_guidance(atlas, target, (0, 0, 0))
    control = registration_positives(batch, PartAnchors(anchors, classes), wrong, bank, step=0)
    vec0, valid0 = control.vectors, control.valid
    both = valid & valid0
    assert (vec0[both] * expected[both]).sum(dim=1).mean() < 0.97


def test_every_positive_counts_and_the_share_whose_atlas_label_is_the_anchors_class_is_counted(world):
    atlas = world[0]
    guidance, bank, batch, anchors = shifted_lookup(world, anchor_seed=1)
    _, voxels = pixel_voxels(batch, anchors)
    there = (voxels + torch.tensor(SHIFT, dtype=torch.float32)).numpy()
    inside = ((there > -0.5) & (there < np.asarray(SHAPE) - 0.5)).all(axis=1)
    truth = torch.from_numpy(label_at(atlas.label, np.where(inside[:, None], there, 0.0)).astype(np.int64))
    right = torch.arange(600) % 2 == 0                  # even anchors: the atlas's class there; odd: the other one
    classes = torch.where(right, truth, 1 - truth)

    every = registration_positives(batch, PartAnchors(anchors, classes), guidance, bank, step=0)
    assert every.valid.sum() > 100
    assert every.found == int(every.valid.sum()) and every.agreeing == int((every.valid & right).sum())
    assert 0 < every.agreeing < every.found   # the disagreeing positives are kept too
    assert every.asked == int((~batch.is_labeled[anchors // (HW[0] * HW[1])]).sum())
    # a positive does not depend on the class it is asked for
    same = registration_positives(batch, PartAnchors(anchors, truth), guidance, bank, step=0)
    assert torch.equal(same.valid, every.valid) and torch.equal(same.vectors, every.vectors)
    # the option that dropped the disagreeing ones is gone
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(JointConfig(), ["reps.positives=label-agree"])


def test_label_at_reads_the_nearest_voxel_up_to_the_volume_edges():
    label = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    points = np.array([[0.0, 0.0, 0.0], [-0.5, -0.5, -0.5], [1.5, 2.5, 3.5], [0.6, 1.4, 2.51]])
    assert label_at(label, points).tolist() == [0, 0, label[1, 2, 3], label[1, 1, 3]]


def test_positives_hook_refreshes_banks_per_student_and_serves_callbacks(world):
    atlas, target, sampler = world
    guidance = shifted_guidance(atlas, target)
    banks = {name: MemoryBank({"lab": SHAPE[0]}, dim=6, sample_hw=HW) for name in ("a", "b")}
    reps = RegistrationPositives(guidance, banks)
    batch = sampler.next_batch()
    emb = embed(batch, code_volume(SHAPE)).requires_grad_(True)
    outputs = {"a": StudentOutput(emb, emb, emb), "b": StudentOutput(emb, emb, -emb)}
    reps.after_step(0, batch, outputs)
    rows = batch.slice_index[batch.is_labeled]
    assert banks["a"].filled[rows].all() and int(banks["a"].filled.sum()) == len(set(rows.tolist()))
    assert torch.allclose(banks["a"].embedding, -banks["b"].embedding)
    assert reps.nbytes == banks["a"].nbytes * 2
    unl = int((~batch.is_labeled).nonzero()[0])
    anchors = unl * HW[0] * HW[1] + torch.arange(HW[0] * HW[1])
    drawn = PartAnchors(anchors, torch.zeros(anchors.numel(), dtype=torch.long))
    keys_a = reps.extra_positive(0, batch, outputs, "a", drawn)
    keys_b = reps.extra_positive(0, batch, outputs, "b", drawn)
    assert isinstance(keys_a, ExtraKeys)
    vec_a, ok_a, vec_b, ok_b = keys_a.vectors, keys_a.valid, keys_b.vectors, keys_b.valid
    assert ok_a.any() and torch.equal(ok_a, ok_b)
    assert torch.allclose(vec_a[ok_a], -vec_b[ok_b], atol=1e-6)
    assert vec_a.shape == (HW[0] * HW[1], 6)
    assert reps.extra_positive(0, batch, outputs, "c", drawn) is None
    assert reps.losses(0, batch, outputs) == {}
    logged = reps.metrics()   # the three lookups above
    assert logged["valid_fraction"] > 0.5 and 0.0 < logged["label_agreement"] < 1.0
    assert "label_agreement" not in reps.metrics()   # nothing looked up since: no share to log

    # A resumed run gets the banks back exactly.
    fresh = RegistrationPositives(guidance, {n: MemoryBank({"lab": SHAPE[0]}, dim=6, sample_hw=HW) for n in ("a", "b")})
    fresh.load_state_dict(reps.state_dict())
    assert torch.equal(fresh.banks["b"].embedding, banks["b"].embedding)
    assert torch.equal(fresh.extra_positive(0, batch, outputs, "a", drawn).vectors, vec_a)
    with pytest.raises(ValueError, match="shape"):
        MemoryBank({"lab": 2}, dim=6, sample_hw=HW).load_state_dict(banks["a"].state_dict())


def test_repeated_slice_in_one_batch_keeps_the_last_sample_with_its_matrix():
    bank = MemoryBank({"lab": 2}, dim=2, sample_hw=(4, 4), cfg=BankConfig(downsample=1))
    flip = torch.tensor([[-1.0, 0.0, 3.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # rows reversed
    ramp = torch.arange(4.0)[None, :, None].expand(1, 4, 4)                   # (1, H, W): value = row
    emb = torch.cat([ramp, torch.ones_like(ramp)])[None]                      # (1, 2, H, W)
    bank.update(["lab", "lab"], torch.tensor([1, 1]), torch.stack([torch.eye(3), flip]),
                torch.cat([emb, emb.flip(2)]))
    # Both samples describe the same slice; either way voxel y=3 has the code of row 3.
    vec, ok = bank.lookup(torch.tensor([0]), torch.tensor([[1.0, 3.0, 1.0]]))
    assert ok.all()
    assert torch.allclose(vec, torch.nn.functional.normalize(torch.tensor([[3.0, 1.0]]), dim=1), atol=1e-3)
