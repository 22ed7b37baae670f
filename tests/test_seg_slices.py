"""2D samples from 3D volumes: the ``to_volume`` matrix is exact, image and label stay aligned
under augmentation, batches are laid out as documented and the sampler resumes exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cctr.seg.slices import (
    AugmentConfig,
    SliceSampler,
    TrainVolume,
    augment_matrix,
    normalize_intensity,
    resample_slice,
    resize_matrix,
)

GEOMETRY_ONLY = AugmentConfig(rotation_deg=30.0, flip=True, zoom=(0.8, 1.25), contrast=(1.0, 1.0), brightness=(0.0, 0.0))


def _blobs(shape=(5, 40, 36), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image and a 3-class label map that follows it (``(Z, Y, X)``)."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 4, 4)).astype(np.float32)
    image /= image.std()
    label = np.digitize(image, [-0.5, 0.5]).astype(np.uint8)
    return image, label


def _volume(case_id: str, seed: int, labeled: bool = True) -> TrainVolume:
    image, label = _blobs(seed=seed)
    return TrainVolume(case_id, torch.from_numpy(image), torch.from_numpy(label) if labeled else None)


def _voxel_of(to_volume: np.ndarray, out_hw) -> tuple[np.ndarray, np.ndarray]:
    r, c = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    y = to_volume[0, 0] * r + to_volume[0, 1] * c + to_volume[0, 2]
    x = to_volume[1, 0] * r + to_volume[1, 1] * c + to_volume[1, 2]
    return y, x


def test_each_pixel_takes_the_voxel_its_to_volume_matrix_names():
    zyx = (5, 40, 36)
    ids = np.arange(np.prod(zyx), dtype=np.int32).reshape(zyx)  # every voxel unique
    sampler = SliceSampler([_volume("v", 0)], [], 3, 0, (24, 32), GEOMETRY_ONLY, seed=1)
    checked = 0
    for _ in range(3):
        batch = sampler.next_batch()
        for m, z in zip(batch.to_volume.numpy().astype(np.float64), batch.slice_index.tolist()):
            out = resample_slice(ids, z, m, (24, 32), "nearest")
            y, x = _voxel_of(m, (24, 32))
            ry, rx = np.rint(y).astype(int), np.rint(x).astype(int)
            inside = (ry >= 0) & (ry < zyx[1]) & (rx >= 0) & (rx < zyx[2])
            # float32 grid arithmetic may round a point lying almost exactly half-way either way
            clear = (np.abs(y - np.floor(y) - 0.5) > 1e-3) & (np.abs(x - np.floor(x) - 0.5) > 1e-3)
            keep = inside & clear
            assert np.array_equal(out[keep], ids[z, ry[keep], rx[keep]])
            assert (out[~inside & clear] == 0).all()
            checked += int(keep.sum())
    assert checked > 1000


def test_linear_resampling_is_bilinear_interpolation_at_the_mapped_point():
    image, _ = _blobs()
    m = resize_matrix((40, 36), (32, 32)) @ augment_matrix((32, 32), 0.4, True, False, 1.1)
    out = resample_slice(image, 2, m, (32, 32), "linear")
    y, x = _voxel_of(m, (32, 32))
    expected = ndimage.map_coordinates(image[2].astype(np.float64), [y, x], order=1, mode="constant", cval=0.0)
    inside = (y >= 0) & (y <= 39) & (x >= 0) & (x <= 35)
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-4)


def test_batch_image_and_label_are_the_volume_resampled_through_the_recorded_geometry():
    vol = _volume("v", 3)
    sampler = SliceSampler([vol], [], 4, 0, (32, 32), GEOMETRY_ONLY, seed=5)
    batch = sampler.next_batch()
    for i in range(4):
        m, z = batch.to_volume[i], int(batch.slice_index[i])
        image = resample_slice(vol.image, z, m, (32, 32), "linear")
        label = resample_slice(vol.label, z, m, (32, 32), "nearest")
        torch.testing.assert_close(batch.image[i, 0], image, atol=1e-5, rtol=0)
        assert torch.equal(batch.label[i], label.long())
    # the label follows the image: away from class boundaries and the slice's edge, they agree
    image, label = batch.image[:, 0], batch.label
    from_image = torch.bucketize(image, torch.tensor([-0.5, 0.5]))
    interior = torch.stack([
        torch.from_numpy((y > 1) & (y < 38) & (x > 1) & (x < 34))
        for y, x in (_voxel_of(m.numpy().astype(np.float64), (32, 32)) for m in batch.to_volume)
    ])
    clear = ((image + 0.5).abs() > 0.3) & ((image - 0.5).abs() > 0.3) & interior
    assert clear.sum() > 500
    assert torch.equal(from_image[clear], label[clear])


def test_resample_slice_keeps_kind_dtype_and_channel_layout():
    image, label = _blobs()
    m = resize_matrix((40, 36), (16, 16))
    onehot = np.stack([label == c for c in range(3)]).astype(np.float32)  # (C, Z, Y, X)
    out = resample_slice(onehot, 1, m, (16, 16), "linear", padding="border")
    assert isinstance(out, np.ndarray) and out.shape == (3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    lab = resample_slice(torch.from_numpy(label), 1, torch.from_numpy(m), (16, 16), "nearest")
    assert isinstance(lab, torch.Tensor) and lab.dtype == torch.uint8 and lab.shape == (16, 16)
    with pytest.raises(ValueError, match="mode"):
        resample_slice(image, 0, m, (16, 16), "cubic")


def test_resize_matrix_of_same_size_is_identity_and_spans_the_slice():
    np.testing.assert_allclose(resize_matrix((20, 30), (20, 30)), np.eye(3))
    m = resize_matrix((40, 36), (20, 12))
    # pixel-centre convention: pixel (0, 0) is the centre of the top-left 2x3 voxel block
    np.testing.assert_allclose(m @ [0, 0, 1], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(m @ [19, 11, 1], [38.5, 34.0, 1.0])


def test_batch_holds_labeled_part_first_and_minus_one_labels_for_unlabeled():
    sampler = SliceSampler([_volume("lab", 0)], [_volume("unl1", 1, False), _volume("unl2", 2, False)],
                           2, 3, (16, 16), AugmentConfig(), seed=0)
    batch = sampler.next_batch()
    assert batch.image.shape == (5, 1, 16, 16) and batch.image.dtype == torch.float32
    assert batch.label.shape == (5, 16, 16) and batch.label.dtype == torch.int64
    assert batch.is_labeled.tolist() == [True, True, False, False, False]
    assert batch.num_labeled == 2
    assert batch.case_id[:2] == ["lab", "lab"] and all(c.startswith("unl") for c in batch.case_id[2:])
    assert (batch.label[2:] == -1).all() and (batch.label[:2] >= 0).all()
    assert batch.to_volume.shape == (5, 3, 3) and batch.slice_index.dtype == torch.int64


def test_sampler_state_restores_the_same_batches():
    pools = ([_volume("lab", 0)], [_volume("unl", 1, False)])
    first = SliceSampler(*pools, 2, 2, (16, 16), AugmentConfig(flip=True), seed=3)
    first.next_batch()
    state = first.state_dict()
    expected = [first.next_batch() for _ in range(2)]
    second = SliceSampler(*pools, 2, 2, (16, 16), AugmentConfig(flip=True), seed=99)
    second.load_state_dict(state)
    for want in expected:
        got = second.next_batch()
        assert torch.equal(got.image, want.image) and torch.equal(got.to_volume, want.to_volume)
        assert got.case_id == want.case_id and torch.equal(got.slice_index, want.slice_index)


def test_sampler_refuses_missing_pools():
    with pytest.raises(ValueError, match="no unlabeled volumes"):
        SliceSampler([_volume("lab", 0)], [], 2, 2, (16, 16), None, seed=0)
    with pytest.raises(ValueError, match="unlabeled"):
        SliceSampler([_volume("u", 0, False)], [], 2, 0, (16, 16), None, seed=0)


def test_zscore_normalisation_per_volume():
    image = np.random.default_rng(0).normal(300.0, 40.0, (3, 8, 8)).astype(np.float32)
    out = normalize_intensity(image, "zscore")
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-4
    assert (normalize_intensity(np.full((2, 3, 3), 7.0), "zscore") == 0).all()
    with pytest.raises(ValueError, match="normalisation"):
        normalize_intensity(image, "minmax")


def test_clip_zscore_clips_to_the_window_before_standardising():
    from cctr.seg.slices import normalize_intensity

    ct = np.array([[[-1000.0, 0.0, 50.0, 100.0, 1500.0]]], dtype=np.float32)
    out = normalize_intensity(ct, "clip-zscore", (0.0, 100.0))
    clipped = np.clip(ct, 0.0, 100.0)
    np.testing.assert_allclose(out, (clipped - clipped.mean()) / clipped.std(), rtol=1e-5)
    with pytest.raises(ValueError, match="intensity_window"):
        normalize_intensity(ct, "clip-zscore", None)
