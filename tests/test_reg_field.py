"""The transform convention of reg.field, the canonical grid and the pre-alignment, checked
against pairs whose true correspondence is known (tests/reg_synthetic.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cctr.reg.field import Field, apply_affine, voxel_grid
from cctr.reg.grid import CanonicalGrid, Pose, canonical_to_native, native_center, to_grid
from cctr.reg.jacobian import jacobian_determinant, regularity
from cctr.reg.model import RegistrationNet, NetConfig
from cctr.reg.placement import field_of, place_pair, place_volume
from cctr.reg import prealign
from cctr.reg.prealign import PrealignConfig
from tests.reg_synthetic import Motion, true_map, volume, one_torch_thread  # noqa: F401 (autouse)

FIXED = ((10, 48, 40), (6.0, 1.5, 1.5))
MOVING = ((12, 40, 44), (5.0, 1.8, 1.8))


def test_identity_maps_every_voxel_to_itself():
    rng = np.random.default_rng(0)
    img = rng.random((5, 7, 6)).astype(np.float32)
    lab = rng.integers(0, 3, (5, 7, 6)).astype(np.uint8)
    f = Field.identity(img.shape)
    assert np.array_equal(f.coords, voxel_grid(img.shape))
    np.testing.assert_allclose(f.warp_image(img), img, atol=1e-6)
    assert np.array_equal(f.warp_labels(lab, 3), lab)
    pts = rng.uniform(-2, 8, (20, 3))
    np.testing.assert_allclose(f.map_points(pts), pts, atol=1e-5)
    np.testing.assert_allclose(jacobian_determinant(f), 1.0, atol=1e-6)
    assert regularity(f).folded_percent == 0.0


def test_warping_a_shifted_label_map_undoes_the_shift():
    _, lab = volume((8, 40, 40), (4.0, 1.5, 1.5))
    shift = np.array([1, 3, -2])
    moved = np.zeros_like(lab)
    moved[1:, 3:, :-2] = lab[:-1, :-3, 2:]  # moving voxel p + shift shows fixed voxel p
    m = np.eye(4)
    m[:3, 3] = shift
    back = Field.from_affine(m, lab.shape, moved.shape).warp_labels(moved, 4)
    inner = (slice(0, -1), slice(0, -3), slice(2, None))
    assert np.array_equal(back[inner], lab[inner])
    assert not np.array_equal(moved, lab)


def test_outside_the_moving_volume_reads_zero_and_background():
    m = np.eye(4)
    m[1, 3] = 30.0  # y -> y + 30: fixed rows 10.. land beyond the moving volume's 40 rows
    f = Field.from_affine(m, (4, 40, 10), (4, 40, 10))
    img = np.ones((4, 40, 10), np.float32)
    lab = np.full((4, 40, 10), 2, np.uint8)
    assert f.warp_image(img)[:, 10:].max() == 0.0
    assert f.warp_image(img)[:, :10].min() == 1.0
    assert (f.warp_labels(lab, 3)[:, 10:] == 0).all()
    assert (f.warp_labels(lab, 3)[:, :10] == 2).all()
    soft = f.warp_onehot(lab, 3)
    np.testing.assert_allclose(soft.sum(0)[:, :10], 1.0, atol=1e-6)
    assert soft.sum(0)[:, 10:].max() == 0.0


@pytest.mark.parametrize("fixed_angle", [0.0, 0.3])
def test_known_translation_through_canonical_grid_and_back(fixed_angle):
    """A constant canonical displacement between grids of different native shapes and
    spacings is the native translation it stands for (axis-aligned and turned placements)."""
    grid = CanonicalGrid((16, 32, 32), (5.0, 2.0, 2.0))
    (fs, fsp), (ms, msp) = FIXED, MOVING
    f_native = canonical_to_native(grid, fsp, Pose(native_center(fs, fsp), fixed_angle))
    m_native = canonical_to_native(grid, msp, Pose(native_center(ms, msp), fixed_angle))
    shift = np.array([0.4, 2.0, -3.0])  # canonical voxels
    disp = np.broadcast_to(shift[:, None, None, None], (3, *grid.shape)).astype(np.float32)
    field = Field.from_canonical(disp, f_native, fs, m_native, ms)
    translate = np.eye(4)
    translate[:3, 3] = shift
    expected = m_native @ translate @ np.linalg.inv(f_native)
    pts = np.array([[2.0, 10.0, 7.0], [7.5, 30.0, 33.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(field.map_points(pts), apply_affine(expected, pts), atol=1e-3)
    np.testing.assert_allclose(field.coords, Field.from_affine(expected, fs, ms).coords, atol=1e-3)
    if fixed_angle == 0.0:  # both volumes centred, not turned: the same move in mm in both
        mm = true_map(fs, fsp, ms, msp, Motion(0.0, tuple(shift * grid.spacing)))
        np.testing.assert_allclose(field.map_points(pts), apply_affine(mm, pts), atol=1e-3)


@pytest.mark.parametrize("angle_deg, shift", [(0.0, (0.0, 7.0, -5.0)), (25.0, (0.0, -4.0, 6.0))])
@pytest.mark.parametrize("downsample, min_dice", [(prealign.DOWNSAMPLE, 0.75), (1, 0.8)])
def test_known_rigid_motion_recovered_by_the_prealignment(angle_deg, shift, downsample, min_dice, monkeypatch):
    """Translation and in-plane rotation (an affine map) between volumes of different
    native grids, found by the rigid search and returned as a native Field: within about one
    voxel as shipped (the search runs on images pooled by ``DOWNSAMPLE``), closer unpooled."""
    monkeypatch.setattr(prealign, "DOWNSAMPLE", downsample)
    (fs, fsp), (ms, msp) = FIXED, MOVING
    motion = Motion(np.deg2rad(angle_deg), shift)
    f_img, f_lab = volume(fs, fsp)
    m_img, m_lab = volume(ms, msp, motion)
    grid = CanonicalGrid((16, 48, 48), (5.0, 1.5, 1.5))
    fixed = place_volume(f_img, fsp, grid)
    moving = place_pair(fixed, place_volume(m_img, msp, grid), grid, PrealignConfig(method="search"))
    field = field_of(None, fixed, moving)
    expected = true_map(fs, fsp, ms, msp, motion)
    inner = np.array([[z, y, x] for z in (3.0, 6.0) for y in (12.0, 24.0, 36.0) for x in (10.0, 20.0, 30.0)])
    err_mm = np.abs(field.map_points(inner) - apply_affine(expected, inner)) * np.asarray(msp)
    assert err_mm[:, 1:].max() < 2.0  # in-plane: within about one voxel
    warped = field.warp_labels(m_lab, 4)
    for c in (1, 2, 3):
        dice = 2 * ((warped == c) & (f_lab == c)).sum() / ((warped == c).sum() + (f_lab == c).sum())
        assert dice > min_dice


def test_canonical_and_native_warps_agree():
    """voxelmorph's warp on the canonical grid equals the native Field's warp seen on that grid."""
    grid = CanonicalGrid((16, 32, 32), (4.0, 2.0, 2.0))
    (fs, fsp), (ms, msp) = FIXED, MOVING
    f_img, _ = volume(fs, fsp)
    m_img, _ = volume(ms, msp, Motion(0.1, (2.0, 3.0, -2.0)))
    fixed = place_volume(f_img, fsp, grid)
    moving = place_volume(m_img, msp, grid)
    zz, yy, xx = voxel_grid(grid.shape)
    disp = np.stack([0.3 * np.sin(yy / 6.0), 1.5 * np.cos(xx / 7.0), -1.2 * np.sin(zz / 5.0 + yy / 9.0)]).astype(np.float32)
    net = RegistrationNet(NetConfig(nb_features=(4, 4, 4, 4), integration_steps=0))
    canon = net.warp(torch.from_numpy(moving.image)[None, None], torch.from_numpy(disp)[None])[0, 0].numpy()
    native = field_of(disp, fixed, moving).dense().warp_image(moving.native_image)
    back_on_grid = to_grid(native, fixed.to_native, grid)
    inside = (slice(2, -2), slice(4, -4), slice(4, -4))
    assert np.abs(canon - back_on_grid)[inside].mean() < 0.02
    # the same test against the opposite sign convention fails clearly
    flipped = net.warp(torch.from_numpy(moving.image)[None, None], torch.from_numpy(-disp)[None])[0, 0].numpy()
    assert np.abs(flipped - back_on_grid)[inside].mean() > 2 * np.abs(canon - back_on_grid)[inside].mean()


def test_jacobian_of_scaling_and_of_a_fold():
    scale = np.diag([2.0, 1.0, 0.5, 1.0])
    det = jacobian_determinant(Field.from_affine(scale, (4, 6, 6), (8, 6, 3)))
    np.testing.assert_allclose(det, 1.0, atol=1e-6)
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(jacobian_determinant(Field.from_affine(scale, (4, 6, 6), (8, 12, 12))), 8.0, atol=1e-5)
    coords = voxel_grid((4, 10, 10))
    coords[2, :, :, 5:] = 9.0 - coords[2, :, :, 5:]  # mirror half of x: a fold
    reg = regularity(Field(coords, (4, 10, 10)))
    assert 30.0 < reg.folded_percent < 70.0


def test_bad_inputs_are_named():
    f = Field.identity((3, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        f.warp_image(np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError, match="outside 0..1"):
        f.warp_labels(np.full((3, 4, 5), 2, np.uint8), 2)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        f.map_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="divisible by 16"):
        CanonicalGrid((10, 64, 64))
