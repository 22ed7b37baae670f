"""The compact Field (cctr.reg.field.CanonicalField): what a backend computed, kept small, and
evaluated lazily for a slab of slices or for points; each lazy path must equal the dense
Field it stands for, and the oracle's cache must stay small on any native grid."""
from __future__ import annotations

import numpy as np
import pytest

import cctr.reg.field
from fakes import ShiftBackend
from cctr.joint.field_cache import load_field, save_field
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.reg.field import CanonicalField, Field, voxel_grid
from cctr.reg.grid import CanonicalGrid, Pose, canonical_to_native, native_center
from cctr.seg.data.case import Case, spacing_affine

GRID = CanonicalGrid((16, 16, 16), (3.0, 3.0, 3.0))
FIXED = ((10, 48, 40), (5.0, 1.5, 1.5))
MOVING = ((12, 40, 44), (4.5, 1.8, 1.8))


def smooth_disp(shape) -> np.ndarray:
    """A smooth canonical displacement, float16-exact so both paths start from the same numbers."""
    zz, yy, xx = voxel_grid(shape)
    disp = np.stack([0.4 * np.sin(yy / 4.0), 1.3 * np.cos(xx / 5.0), -1.1 * np.sin(zz / 3.0 + yy / 6.0)])
    return disp.astype(np.float16).astype(np.float32)


def compact(angle: float) -> tuple[CanonicalField, Field]:
    (fs, fsp), (ms, msp) = FIXED, MOVING
    f_native = canonical_to_native(GRID, fsp, Pose(native_center(fs, fsp), angle))
    m_native = canonical_to_native(GRID, msp, Pose(native_center(ms, msp), angle + 0.1))
    disp = smooth_disp(GRID.shape)
    return (CanonicalField(disp, f_native, fs, m_native, ms),
            Field.from_canonical(disp, f_native, fs, m_native, ms))


@pytest.mark.parametrize("angle", [0.0, 0.35])   # axis-aligned (separable) and turned placements
def test_slabs_and_points_equal_the_dense_field(angle):
    lazy, dense = compact(angle)
    np.testing.assert_allclose(lazy.dense().coords, dense.coords, atol=1e-4)
    for start, stop in [(0, 1), (3, 7), (9, 10)]:
        np.testing.assert_allclose(lazy.slab(start, stop).coords, dense.coords[:, start:stop], atol=1e-4)
    # at voxel centres the map evaluated at the points is the dense map there
    rng = np.random.default_rng(0)
    centres = np.stack([rng.integers(0, n, 50) for n in FIXED[0]], axis=1).astype(np.float64)
    want = dense.coords[:, centres[:, 0].astype(int), centres[:, 1].astype(int), centres[:, 2].astype(int)].T
    np.testing.assert_allclose(lazy.map_points(centres), want, atol=1e-4)
    # between centres the exact map and the dense map's interpolation differ by far less than a voxel
    between = centres[:, :] + np.concatenate([np.zeros((50, 1)), rng.uniform(0, 1, (50, 2))], axis=1)
    between = np.minimum(between, np.asarray(FIXED[0]) - 1.0)
    assert np.abs(lazy.map_points(between) - dense.map_points(between)).max() < 0.05


def test_slab_wise_labels_equal_the_dense_warp():
    lazy, dense = compact(0.2)
    label = np.zeros(MOVING[0], np.uint8)
    label[2:9, 10:30, 12:34] = 1
    label[4:7, 15:25, 18:28] = 2
    np.testing.assert_array_equal(lazy.warp_labels(label, 3, slab_slices=3), dense.warp_labels(label, 3))


def test_the_check_refuses_damage_also_when_it_reads_only_some_slices(monkeypatch):
    lazy, _ = compact(0.0)
    assert lazy.check("ok") is lazy
    nan = lazy.disp.astype(np.float32)
    nan[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="bad.npz: Field holds NaN or inf at 1 canonical voxel"):
        CanonicalField(nan, lazy.fixed_to_native, lazy.fixed_shape, lazy.moving_to_native, lazy.moving_shape).check("bad.npz")
    noisy = lazy.disp + np.random.default_rng(1).normal(0, 4.0, lazy.disp.shape).astype(np.float32)
    damaged = CanonicalField(noisy, lazy.fixed_to_native, lazy.fixed_shape, lazy.moving_to_native, lazy.moving_shape)
    monkeypatch.setattr(cctr.reg.field, "FULL_CHECK_VOXELS", 100)   # as for a large CT: a few slices only
    monkeypatch.setattr(cctr.reg.field, "CHECK_SLICES", 2)
    read = []
    original = CanonicalField.slab
    monkeypatch.setattr(CanonicalField, "slab", lambda self, a, b: read.append((a, b)) or original(self, a, b))
    with pytest.raises(ValueError, match="not smooth"):
        damaged.check("noise.npz")
    assert read == [(0, 1)]   # refused at the first slice it read
    read.clear()
    again = CanonicalField(lazy.disp, lazy.fixed_to_native, lazy.fixed_shape, lazy.moving_to_native, lazy.moving_shape)
    again.check("ok")
    assert read == [(0, 1), (9, 10)]
    read.clear()
    again.check("ok")
    assert read == []   # found plausible once: a frozen Field is not read again


def test_a_full_check_reads_slabs_and_still_refuses_one_rough_slice(monkeypatch):
    """Below FULL_CHECK_VOXELS every slice is checked, CHECK_SLAB_VOXELS at a time; each slice
    is judged alone, so one slice of noise among smooth ones is refused as a check of the
    slices one by one refuses it (a mean over the slab would dilute it below the limit)."""
    lazy, dense = compact(0.0)
    Z, Y, X = lazy.fixed_shape
    monkeypatch.setattr(cctr.reg.field, "CHECK_SLAB_VOXELS", 4 * Y * X)
    read = []
    original = CanonicalField.slab
    monkeypatch.setattr(CanonicalField, "slab", lambda self, a, b: read.append((a, b)) or original(self, a, b))
    lazy.check("ok")
    assert read == [(0, 4), (4, 8), (8, 10)]
    coords = dense.coords.copy()
    coords[1:, 6] += np.random.default_rng(2).normal(0, 3.0, coords[1:, 6].shape).astype(np.float32)
    with pytest.raises(ValueError, match="cache/x.npz: Field is not smooth"):
        cctr.reg.field.validate_field(Field(coords, dense.moving_shape), "cache/x.npz")
    cctr.reg.field.validate_field(Field(np.delete(coords, 6, axis=1), dense.moving_shape), "the other slices")


def test_affine_and_dense_fields_are_special_cases():
    m = np.eye(4)
    m[:3, :3] = np.diag([0.5, 1.2, 0.9])
    m[:3, 3] = [1.0, -2.0, 3.0]
    np.testing.assert_allclose(CanonicalField.from_affine(m, (4, 6, 5), (3, 9, 7)).dense().coords,
                               Field.from_affine(m, (4, 6, 5), (3, 9, 7)).coords, atol=1e-5)
    dense = Field(Field.identity((4, 6, 5)).coords + np.float32(0.25), (4, 6, 5))
    kept = CanonicalField.of_dense(dense)
    np.testing.assert_allclose(kept.dense().coords, dense.coords, atol=1e-3)
    np.testing.assert_allclose(kept.map_points(np.array([[1.0, 2.0, 3.0]])), [[1.25, 2.25, 3.25]], atol=1e-3)


def test_a_cached_pair_costs_kilobytes_whatever_the_native_grid(tmp_path):
    """A CT-like native grid (60 x 256 x 256): the dense Field would be 3 x 60 x 256 x 256 float16
    = 23.6 MB on disk; the canonical one holds 3 x 16 x 16 x 16 values and two matrices."""
    fixed_shape = (60, 256, 256)
    f_native = canonical_to_native(GRID, (2.5, 0.8, 0.8), Pose(native_center(fixed_shape, (2.5, 0.8, 0.8))))
    field = CanonicalField(smooth_disp(GRID.shape), f_native, fixed_shape, f_native, fixed_shape)
    path = tmp_path / "pair.npz"
    save_field(path, field)
    assert path.stat().st_size < 40_000 and field.nbytes < 30_000
    back = load_field(path)
    np.testing.assert_array_equal(back.disp, field.disp)
    np.testing.assert_allclose(back.slab(30, 31).coords, field.slab(30, 31).coords, atol=1e-5)


def _case(case_id: str, shape, label: bool) -> Case:
    rng = np.random.default_rng(sum(map(ord, case_id)))
    lab = rng.integers(0, 3, shape).astype(np.uint8) if label else None
    return Case(case_id=case_id, patient_id=case_id, image=rng.random(shape).astype(np.float32), label=lab,
                spacing=(2.0, 1.0, 1.0), affine=spacing_affine((2.0, 1.0, 1.0)), sources=(),
                class_names=("background", "a", "b"))


def test_processes_share_the_warm_through_the_disk_cache(tmp_path):
    """Under torchrun each process computes its share of the pairs; the rest come from disk."""
    atlases = [_case(f"atlas{i}", (4, 10, 12), True) for i in range(2)]
    targets = [_case(f"target{i}", (4, 10, 12), False) for i in range(3)]
    cfg = OracleConfig(cache=str(tmp_path / "cache"))
    backends = [ShiftBackend((0, 1, 0)), ShiftBackend((0, 1, 0))]
    for rank, backend in enumerate(backends):
        oracle = RegistrationOracle(atlases, targets, backend, cfg)
        assert oracle.warm(progress=False, shard=(rank, 2)) == 6
    assert [sum(b.calls) for b in backends] == [3, 3]   # 6 pairs, each computed once
    after = ShiftBackend((0, 1, 0))
    reader = RegistrationOracle(atlases, targets, after, cfg)
    reader.warm(progress=False)
    assert after.calls == [] and len(list((tmp_path / "cache").rglob("*.npz"))) == 6
    with pytest.raises(ValueError, match="shard"):
        reader.warm(progress=False, shard=(2, 2))
    # without a shared cache every process needs every pair itself
    alone = ShiftBackend((0, 1, 0))
    RegistrationOracle(atlases, targets, alone, OracleConfig()).warm(progress=False, shard=(1, 2))
    assert sum(alone.calls) == 6


def test_labels_at_points_equal_the_whole_warp_there():
    atlases = [_case("atlas", (5, 10, 12), True)]
    targets = [_case("target", (5, 10, 12), False)]
    oracle = RegistrationOracle(atlases, targets, ShiftBackend((0.3, 1.4, -0.6)), OracleConfig())
    whole = oracle.field("target", "atlas").dense().warp_onehot(atlases[0].label, 3)
    for z in range(5):
        points = np.stack(np.meshgrid([float(z)], np.arange(10), np.arange(12), indexing="ij"), -1).reshape(-1, 3)
        got = oracle.warped_points("target", ("atlas",), points).probs.astype(np.float32).reshape(3, 10, 12)
        np.testing.assert_allclose(got, whole[:, z], atol=2e-3)


def test_a_slab_reads_only_the_moving_slices_it_reaches_and_the_same_values():
    """The warp samples the box of the moving volume its coords reach (one voxel of margin,
    edges held as at the volume's own edges): the same values as sampling everything."""
    from scipy import ndimage
    lazy, _ = compact(0.2)
    label = np.random.default_rng(3).integers(0, 3, MOVING[0]).astype(np.uint8)
    image = np.random.default_rng(4).random(MOVING[0]).astype(np.float32)
    for start in (0, 4, 9):
        slab = lazy.slab(start, start + 1)
        inside = slab.inside()
        soft = slab.warp_onehot(label, 3)
        for c in range(3):
            full = ndimage.map_coordinates((label == c).astype(np.float32), slab.coords, order=1, mode="nearest",
                                           prefilter=False)
            np.testing.assert_allclose(soft[c][inside], full[inside], atol=1e-6)
        full = ndimage.map_coordinates(image, slab.coords, order=1, mode="nearest", prefilter=False)
        np.testing.assert_allclose(slab.warp_image(image)[inside], full[inside], atol=1e-6)
