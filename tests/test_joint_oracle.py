"""The registration oracle: Field caching (memory LRU by bytes, disk), batching, atlas policies,
warped atlas labels, and its errors on bad input."""
from __future__ import annotations


import numpy as np
import pytest

from fakes import ShiftBackend
from cctr.joint.field_cache import ByteLRU, CorruptCacheEntry, load_field, save_field
from cctr.joint.oracle import OracleConfig, RegistrationOracle, vote
from cctr.reg.backends import LEARNED_BATCH, load_backend
from cctr.reg.field import CanonicalField, Field
from cctr.reg.spec import BackendSpec
from cctr.seg.data.case import Case, CaseError, spacing_affine

CLASSES = ("background", "RV", "MYO", "LV")
SHAPE = (4, 12, 14)


def make_case(case_id: str, image: np.ndarray, label: np.ndarray | None = None) -> Case:
    return Case(case_id=case_id, patient_id=case_id, image=image.astype(np.float32), label=label,
                spacing=(5.0, 1.5, 1.5), affine=spacing_affine((5.0, 1.5, 1.5)), sources=(), class_names=CLASSES)


def blob_label(center_yx: tuple[int, int]) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    cy, cx = center_yx
    lab[:, cy - 2:cy + 3, cx - 2:cx + 3] = 1
    lab[:, cy - 1:cy + 2, cx - 1:cx + 2] = 3
    return lab


class RefusingBackend(ShiftBackend):
    def register_many(self, pairs):
        raise AssertionError("the disk cache should have answered")


@pytest.fixture
def cases():
    rng = np.random.default_rng(0)
    atlases = [make_case(f"atlas{i}", rng.random(SHAPE), blob_label((5 + i, 6))) for i in range(3)]
    targets = [make_case(f"target{i}", rng.random(SHAPE)) for i in range(4)]
    return atlases, targets


def test_byte_lru_evicts_least_recently_used_and_refuses_oversize():
    lru = ByteLRU[bytes](10, len)
    lru.put("a", b"xxxx")
    lru.put("b", b"xxxx")
    assert lru.get("a") == b"xxxx"  # 'a' is now the most recent
    lru.put("c", b"xxxx")
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.nbytes == 8
    lru.put("big", b"x" * 11)
    assert "big" not in lru and len(lru) == 2


def test_fields_are_batched_then_served_from_memory(cases):
    atlases, targets = cases
    backend = ShiftBackend((0, 1, 0))
    oracle = RegistrationOracle(atlases, targets, backend, OracleConfig())
    pairs = [(t.case_id, a.case_id) for t in targets[:3] for a in atlases[:3]][:LEARNED_BATCH + 1]
    fields = oracle.many_fields(pairs)
    assert backend.calls == [LEARNED_BATCH, 1]   # in-process backends get LEARNED_BATCH pairs per call
    assert all(isinstance(f, CanonicalField) and f.fixed_shape == SHAPE for f in fields)
    np.testing.assert_allclose(fields[0].dense().coords[1], Field.identity(SHAPE).coords[1] + 1)
    oracle.many_fields(pairs)
    assert backend.calls == [LEARNED_BATCH, 1]


def test_memory_cache_stays_under_its_byte_bound(cases):
    atlases, targets = cases
    one_field = ShiftBackend().register(targets[0].image, (1, 1, 1), atlases[0].image, (1, 1, 1)).nbytes
    oracle = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig(field_memory_mb=2 * one_field / 2**20))
    assert oracle.warm(progress=False) == len(atlases) * len(targets)
    assert len(oracle.fields) == 2 and oracle.fields.nbytes <= 2 * one_field


def test_disk_cache_is_reused_by_a_second_run_and_keyed_on_content(cases, tmp_path):
    atlases, targets = cases
    cfg = OracleConfig(cache=str(tmp_path / "fields"))
    first = RegistrationOracle(atlases, targets, ShiftBackend((0.5, -2.25, 1.0)), cfg)
    first.warm(progress=False)
    files = sorted((tmp_path / "fields").rglob("*"))
    npz = [p for p in files if p.suffix == ".npz"]
    assert len(npz) == len(atlases) * len(targets)
    assert not [p for p in files if p.name.startswith(".tmp-")]

    second = RegistrationOracle(atlases, targets, RefusingBackend(), cfg)
    got = second.field("target1", "atlas2")
    np.testing.assert_allclose(got.dense().coords, first.field("target1", "atlas2").dense().coords, atol=1e-3)

    # Same id, other voxels: the key changes, so the refusing backend is asked.
    changed = [make_case("target1", targets[1].image + 1.0)]
    third = RegistrationOracle(atlases, changed, RefusingBackend(), cfg)
    with pytest.raises(AssertionError, match="disk cache"):
        third.field("target1", "atlas2")


def test_corrupt_cached_field_names_the_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CorruptCacheEntry, match="broken.npz"):
        load_field(bad)
    good = tmp_path / "ok.npz"
    fld = CanonicalField.of_dense(Field(Field.identity(SHAPE).coords + 0.25, (5, 6, 7)))
    save_field(good, fld)
    back = load_field(good)
    assert back.moving_shape == (5, 6, 7) and back.fixed_shape == SHAPE
    np.testing.assert_allclose(back.dense().coords, fld.dense().coords, atol=1e-3)


@pytest.mark.parametrize("damage", ["truncated", "nan", "noise"])
def test_a_bad_cache_entry_is_quarantined_and_recomputed(cases, tmp_path, damage):
    atlases, targets = cases
    cfg = OracleConfig(cache=str(tmp_path / "fields"))
    first = RegistrationOracle(atlases, targets, ShiftBackend((0.5, -2.25, 1.0)), cfg)
    want = first.field("target0", "atlas1")
    (entry,) = (tmp_path / "fields").rglob("*.npz")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:40])
    else:
        disp = want.disp.astype(np.float32)
        if damage == "nan":
            disp[1, 0, 2, 3] = np.nan
        else:
            disp += np.random.default_rng(0).normal(0, 3.0, disp.shape).astype(np.float32)
        save_field(entry, CanonicalField(disp, want.fixed_to_native, want.fixed_shape, want.moving_to_native,
                                         want.moving_shape))
    backend = ShiftBackend((0.5, -2.25, 1.0))
    second = RegistrationOracle(atlases, targets, backend, cfg)
    with pytest.warns(UserWarning, match="recomputing"):
        got = second.field("target0", "atlas1")
    assert backend.calls == [1]  # computed again, not read from the damaged file
    np.testing.assert_array_equal(got.disp, want.disp)
    assert entry.is_file() and list((tmp_path / "fields").rglob("*.corrupt"))
    np.testing.assert_array_equal(load_field(entry).disp, want.disp)  # the new entry is good


def test_an_implausible_field_from_a_backend_is_refused(cases):
    atlases, targets = cases
    with pytest.raises(ValueError, match="NaN"):
        RegistrationOracle(atlases, targets, ShiftBackend((np.nan, 0, 0)), OracleConfig()).field("target0", "atlas1")


def test_random_policy_is_seeded_per_step_and_shared_by_callers(cases):
    atlases, targets = cases
    oracle = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig(policy="random"), seed=3)
    again = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig(policy="random"), seed=3)
    picks = [oracle.atlases_for("target0", step, 1) for step in range(60)]
    assert picks == [again.atlases_for("target0", step, 1) for step in range(60)]
    assert all(len(p) == 1 for p in picks)
    assert {p[0] for p in picks} == {a.case_id for a in atlases}
    other_seed = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig(policy="random"), seed=4)
    assert picks != [other_seed.atlases_for("target0", step, 1) for step in range(60)]


def test_similar_policy_picks_the_most_alike_image_and_fused_takes_all(cases):
    atlases, targets = cases
    rng = np.random.default_rng(1)
    look_alike = make_case("target-like-1", atlases[1].image + 0.05 * rng.random(SHAPE))
    oracle = RegistrationOracle(atlases, [look_alike], ShiftBackend(), OracleConfig(policy="similar"))
    assert oracle.atlases_for("target-like-1", step=7) == ("atlas1",)
    assert oracle.needed_pairs() == [("target-like-1", "atlas1")]
    fused = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig(policy="fused"))
    assert fused.atlases_for("target2", step=0) == ("atlas0", "atlas1", "atlas2")


def test_warped_atlas_follows_the_field_and_votes(cases):
    atlases, targets = cases
    # Moving point of fixed (z, y, x) is (z, y + 1, x): the warped label is the atlas label moved up one row.
    oracle = RegistrationOracle(atlases, targets, ShiftBackend((0, 1, 0)), OracleConfig(policy="fused"))
    expected = np.zeros(SHAPE, np.uint8)
    expected[:, :-1] = atlases[0].label[:, 1:]
    np.testing.assert_array_equal(oracle.warped_label("target0", ("atlas0",), slab_slices=2), expected)
    # the voxels of slice 1, as points
    points = np.stack(np.meshgrid([1.0], np.arange(SHAPE[1]), np.arange(SHAPE[2]), indexing="ij"), -1).reshape(-1, 3)
    single = oracle.warped_points("target0", ("atlas0",), points)
    np.testing.assert_array_equal(single.hard_label().reshape(SHAPE[1:]), expected[1])
    assert single.probs.shape == (4, len(points)) and single.probs.dtype == np.float16
    # the same answer from the pieces a training step uses: the pair's point Field, then the vote
    on_target = np.ones(len(points), dtype=bool)
    pieces = oracle.vote_at(("atlas0",), [oracle.points_field("target0", "atlas0", points)], on_target)
    np.testing.assert_array_equal(pieces.probs, single.probs)
    np.testing.assert_array_equal(pieces.agreement, single.agreement)
    # The last row maps to y = 12, outside [-0.5, 11.5]: no atlas covers it.
    last_row = single.probs.reshape(4, *SHAPE[1:])[:, -1]
    assert float(last_row.sum()) == 0.0 and float(single.agreement.reshape(SHAPE[1:])[-1].max()) == 0.0
    # a point outside the target itself gets nothing, whatever the Field says there
    assert float(oracle.warped_points("target0", ("atlas0",), np.array([[1.0, -0.8, 3.0]])).probs.sum()) == 0.0

    fused = oracle.warped_points("target0", oracle.atlases_for("target0", 0), points + [1.0, 0.0, 0.0])
    probs = fused.probs.astype(np.float32).reshape(4, *SHAPE[1:])
    np.testing.assert_allclose(probs[:, :-1].sum(axis=0), 1.0, atol=1e-2)
    # atlas centres are rows 5, 6, 7: voxels all three call LV agree fully, at a disputed edge 1/3 or 2/3
    agree = fused.agreement.astype(np.float32).reshape(SHAPE[1:])
    lv_all = (fused.hard_label().reshape(SHAPE[1:]) == 3)
    assert np.allclose(agree[5, 6], 1.0) and lv_all[5, 6]
    assert ((agree > 0.3) & (agree < 0.7)).any()


def test_the_vote_averages_soft_labels_and_counts_who_agrees():
    one = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])    # (C=2, N=3): class 0, class 1, nothing
    two = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])    # class 0, class 0, nothing
    warped = vote(("a", "b"), [one, two])
    np.testing.assert_allclose(warped.probs.astype(np.float32), [[1.0, 0.5, 0.0], [0.0, 0.5, 0.0]])
    assert warped.hard_label().tolist() == [0, 0, 0]   # a tie goes to the first class, as argmax
    np.testing.assert_allclose(warped.agreement.astype(np.float32), [1.0, 0.5, 0.0])
    assert warped.atlas_ids == ("a", "b")


def test_bad_inputs_raise_clear_errors(cases):
    atlases, targets = cases
    with pytest.raises(ValueError, match="oracle.policy"):
        OracleConfig(policy="nearest")
    with pytest.raises(ValueError, match="unknown registration backend"):
        OracleConfig(backend="elastix")   # the spec is parsed when the config is built
    for gone in ("batch_pairs", "similarity_shape", "grid", "prealign"):   # constants, or the caller's front end
        with pytest.raises(TypeError, match=gone):
            OracleConfig(**{gone: None})
    with pytest.raises(CaseError, match="target0.*no label"):
        RegistrationOracle([targets[0]], targets[1:], ShiftBackend(), OracleConfig())
    oracle = RegistrationOracle(atlases, targets, ShiftBackend(), OracleConfig())
    with pytest.raises(CaseError, match="unknown case 'nobody'"):
        oracle.field("nobody", "atlas0")

    class WrongShape(ShiftBackend):
        def register_many(self, pairs):
            return [CanonicalField.of_dense(Field.identity((2, 2, 2))) for _ in pairs]

    wrong = RegistrationOracle(atlases, targets, WrongShape(), OracleConfig())
    with pytest.raises(ValueError, match="target0"):
        wrong.field("target0", "atlas0")


def test_the_backend_spec_is_parsed_once_into_the_config():
    cfg = OracleConfig(backend="sitk-demons?iterations=5&prealign=none")
    assert cfg.spec == BackendSpec.parse("sitk-demons?iterations=5&prealign=none")
    assert cfg.spec.params.iterations == 5 and cfg.spec.prealign == "none"
    assert OracleConfig().spec is None


def test_classical_pairs_run_in_worker_processes_then_come_from_disk(tmp_path, monkeypatch):
    import cctr.joint.oracle

    spec = "sitk-demons?iterations=5&prealign=none"
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    disc = lambda cy, cx: (((y - cy) ** 2 + (x - cx) ** 2) < 12).astype(np.float32)  # noqa: E731
    atlases = [make_case("atlas", disc(6, 7), (disc(6, 7) * 3).astype(np.uint8))]
    targets = [make_case(f"t{i}", disc(5 + i, 6 + i)) for i in range(3)]
    pairs = [(t.case_id, "atlas") for t in targets]
    serial = RegistrationOracle(atlases, targets, load_backend(spec), OracleConfig(backend=spec, workers=1))
    cfg = OracleConfig(backend=spec, workers=2, cache=str(tmp_path / "cache"))
    pooled = RegistrationOracle(atlases, targets, load_backend(cfg.spec), cfg)
    assert pooled.warm(progress=False) == 3
    for pair in pairs:
        np.testing.assert_allclose(pooled.field(*pair).disp, serial.field(*pair).disp, atol=1e-3)
    assert np.abs(serial.field("t2", "atlas").disp).max() > 0.02  # demons did move something

    def no_pool(*args, **kwargs):
        raise AssertionError("a second run must not register again")

    monkeypatch.setattr(cctr.joint.oracle, "ProcessPoolExecutor", no_pool)
    again = RegistrationOracle(atlases, targets, load_backend(cfg.spec), cfg)
    again.warm(progress=False)
    for pair in pairs:
        np.testing.assert_array_equal(again.field(*pair).disp, pooled.field(*pair).disp)
