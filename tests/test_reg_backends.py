"""Backends behind one spec string: identity, the classical SimpleITK ones, the learned one
from a checkpoint alone, and the clear errors for bad specs and bad checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cctr.reg.backends
from cctr.reg.backends import load_backend
from cctr.reg.checkpoint import save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.grid import CanonicalGrid
from cctr.reg.losses import LocalNCCLoss, _clamped_local_ncc
from cctr.reg.model import RegistrationNet
from cctr.reg.placement import FrontEnd
from cctr.reg.prealign import PrealignConfig
from cctr.reg.refine import RefineConfig
from cctr.reg.spec import BackendSpec
from tests.reg_synthetic import Motion, volume, one_torch_thread  # noqa: F401 (autouse)

FIXED = ((8, 48, 40), (6.0, 1.5, 1.5))
MOVING = ((9, 40, 44), (5.5, 1.8, 1.8))
SMALL = CanonicalGrid((16, 32, 32), (4.0, 2.4, 2.4))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == c) & (b == c)).sum() / max(1, (a == c).sum() + (b == c).sum()) for c in (1, 2, 3)]))


@pytest.fixture(scope="module")
def pair():
    (fs, fsp), (ms, msp) = FIXED, MOVING
    f_img, f_lab = volume(fs, fsp)
    m_img, m_lab = volume(ms, msp, Motion(np.deg2rad(15.0), (0.0, 4.0, -3.0)))
    return f_img, fsp, f_lab, m_img, msp, m_lab


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = RegConfig.from_dict({"grid": {"shape": [16, 32, 32], "spacing": [4.0, 2.4, 2.4]},
                                  "net": {"nb_features": [4, 4, 4, 4]}})
    torch.manual_seed(0)
    net = RegistrationNet(config.net)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": net.state_dict()})
    return path


def test_identity_overlays_volumes_centre_on_centre(pair):
    f_img, fsp, _, m_img, msp, _ = pair
    same = load_backend("identity").register(f_img, fsp, f_img, fsp).dense()
    np.testing.assert_allclose(same.coords, same.identity(f_img.shape).coords, atol=1e-5)
    other = load_backend("identity").register(f_img, fsp, m_img, msp)
    centre = (np.asarray(f_img.shape) - 1) / 2
    np.testing.assert_allclose(other.map_points(centre[None])[0], (np.asarray(m_img.shape) - 1) / 2, atol=1e-4)


def test_demons_improves_on_identity_and_is_deterministic(pair):
    f_img, fsp, f_lab, m_img, msp, m_lab = pair
    spec = "sitk-demons?iterations=20"
    backend = load_backend(spec, FrontEnd(SMALL))
    first = backend.register(f_img, fsp, m_img, msp)
    again = backend.register(f_img, fsp, m_img, msp)
    assert np.array_equal(first.disp, again.disp)
    assert first.fixed_shape == f_img.shape and first.moving_shape == m_img.shape
    base = _dice(load_backend("identity").register(f_img, fsp, m_img, msp).warp_labels(m_lab, 4), f_lab)
    assert _dice(first.warp_labels(m_lab, 4), f_lab) > base + 0.2


def test_bspline_returns_a_regular_field(pair):
    f_img, fsp, f_lab, m_img, msp, m_lab = pair
    field = load_backend("sitk-bspline?iterations=5&mesh_mm=30", FrontEnd(SMALL)).register(f_img, fsp, m_img, msp)
    assert field.fixed_shape == f_img.shape
    assert _dice(field.warp_labels(m_lab, 4), f_lab) > 0.5


def _equal_up_to_batch_noise(a: np.ndarray, b: np.ndarray) -> None:
    """float16 storage, float32 batches: Adam's normalised steps turn 1e-7 of batch noise in an
    all but flat gradient into a few thousandths of a voxel, on some CPUs a hundredth, at a handful
    of voxels. A pair mixed up with its batch-mates would differ by tenths at most voxels."""
    diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    assert diff.max() < 0.05 and float(np.mean(diff > 5e-3)) < 1e-3, (diff.max(), float(np.mean(diff > 5e-3)))


def test_learned_backend_runs_from_the_checkpoint_alone_and_batches(pair, checkpoint, monkeypatch):
    f_img, fsp, _, m_img, msp, _ = pair
    monkeypatch.setattr(cctr.reg.backends, "LEARNED_BATCH", 2)   # three pairs: a batch of two, then one
    backend = load_backend(f"learned:{checkpoint}")   # refined by default: per pair, whatever the batch
    fields = backend.register_many([(f_img, fsp, m_img, msp), (m_img, msp, f_img, fsp), (f_img, fsp, m_img, msp)])
    assert [f.fixed_shape for f in fields] == [f_img.shape, m_img.shape, f_img.shape]
    _equal_up_to_batch_noise(fields[0].disp, fields[2].disp)
    single = backend.register(f_img, fsp, m_img, msp)
    _equal_up_to_batch_noise(single.dense().coords, fields[0].dense().coords)
    params = load_backend(f"learned:{checkpoint}").params
    assert params["kind"] == "learned" and len(params["checkpoint_sha256"]) == 64
    assert params["config"]["grid"]["shape"] == [16, 32, 32]


def test_a_backend_places_a_pair_once_and_gives_the_same_field_from_the_kept_placement(pair, checkpoint, monkeypatch):
    """The coupled run asks the same pairs every refresh: the kept placement must give the bits
    a fresh one gives, and a budget too small for a pair keeps nothing."""
    import dataclasses

    f_img, fsp, _, m_img, msp, _ = pair
    calls = []
    real = cctr.reg.backends.place_pair
    monkeypatch.setattr(cctr.reg.backends, "place_pair", lambda *a: calls.append(1) or real(*a))
    spec = f"learned:{checkpoint}?refine=0"
    backend = load_backend(spec)
    pairs = [(f_img, fsp, m_img, msp), (m_img, msp, f_img, fsp)]
    first = backend.register_many(pairs)
    again = backend.register_many(pairs)
    assert len(calls) == 2
    fresh = load_backend(spec).register_many(pairs)
    assert len(calls) == 4
    for a, b, c in zip(first, again, fresh):
        assert np.array_equal(a.disp, b.disp) and np.array_equal(a.disp, c.disp)
        assert np.array_equal(b.moving_to_native, c.moving_to_native)
    tight = dataclasses.replace(backend, placed_pairs=cctr.reg.backends.PlacedPairs(max_bytes=1))
    tight.register_many([(f_img, fsp, m_img, msp), (f_img, fsp, m_img, msp)])
    assert len(calls) == 6 and len(tight.placed_pairs._pairs) == 0


def test_backend_params_name_every_option():
    params = load_backend("sitk-demons?iterations=7").params
    assert params["iterations"] == 7 and params["sigma_mm"] > 0 and params["prealign"]["method"] == "search"
    assert tuple(params["grid"]["shape"]) == FrontEnd().grid.shape   # the project defaults without a front end
    assert load_backend("sitk-demons?prealign=none").params["prealign"]["method"] == "none"
    # the front end handed in (a dataset's plan) is the classical backends' grid and pre-alignment;
    # the spec's prealign= wins over it
    planned = FrontEnd(SMALL, PrealignConfig(method="moments"))
    assert load_backend("sitk-demons", planned).params["prealign"]["method"] == "moments"
    assert tuple(load_backend("sitk-demons", planned).params["grid"]["shape"]) == SMALL.shape
    assert load_backend("sitk-demons?prealign=none", planned).params["prealign"]["method"] == "none"
    assert load_backend("identity").params == {"kind": "identity"}


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("elastix", "unknown registration backend"),
    ("learned", "learned:PATH"),
    ("identity:foo", "only 'learned' takes a path"),
    ("sitk-demons?iterations", "not key=value"),
    ("sitk-demons?iterations=many", "not a valid int"),
    ("sitk-demons?speed=3", r"unknown option\(s\) \['speed'\]"),
    ("sitk-demons?prealign=magic", "prealign must be one of"),
    ("identity?x=1", "takes no options"),
    # options of earlier versions are unknown now: the pyramid levels are a constant, the
    # learned net batches LEARNED_BATCH pairs on the device load_backend is given
    ("sitk-demons?levels=1", r"unknown option\(s\) \['levels'\]"),
    ("sitk-demons?match_histograms=false", "unknown option"),
    ("sitk-bspline?levels=1", "unknown option"),
    ("ants-syn?seed=3", "unknown option"),
    ("learned:net.pt?batch=2", r"unknown option\(s\) \['batch'\]"),
    ("learned:net.pt?device=cpu", "unknown option"),
])
def test_bad_specs_are_refused_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        load_backend(spec)


def test_spec_grammar():
    s = BackendSpec.parse("learned:runs/a:b/best.pt?refine=4")
    assert (s.kind, s.checkpoint, s.refine) == ("learned", Path("runs/a:b/best.pt"), RefineConfig(steps=4))
    assert str(s) == s.text == "learned:runs/a:b/best.pt?refine=4" and s.is_learned and s.runs_in_process
    assert s.params is None and s.prealign == ""
    d = BackendSpec.parse("sitk-demons?iterations=7&prealign=none")
    assert (d.kind, d.checkpoint, d.params.iterations, d.prealign) == ("sitk-demons", None, 7, "none")
    assert not d.is_learned and not d.runs_in_process
    assert BackendSpec.parse("ants-syn").params is None
    # a short folder name: the kind alone, or with a hash of the whole spec when it has more
    assert BackendSpec.parse("identity").tag == "identity"
    assert s.tag.startswith("learned-") and s.tag != BackendSpec.parse("learned:runs/a:b/best.pt").tag


def test_bad_checkpoints_are_refused_clearly(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backend(f"learned:{tmp_path / 'missing.pt'}")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt: a text file, not a checkpoint \(it begins .not a checkpoint.\)"):
        load_backend(f"learned:{junk}")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a cctr registration checkpoint"):
        load_backend(f"learned:{foreign}")
    data = torch.load(checkpoint, weights_only=True)
    data["config"]["net"]["nb_features"] = [8, 8, 8, 8]
    mismatched = tmp_path / "mismatched.pt"
    torch.save(data, mismatched)
    with pytest.raises(ValueError, match="do not fit the stored config"):
        load_backend(f"learned:{mismatched}")


def test_ants_without_antspyx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ants", None)  # import ants -> ImportError
    with pytest.raises(ImportError, match="pip install antspyx"):
        load_backend("ants-syn")


def test_bad_volumes_are_named(pair):
    f_img, fsp, _, m_img, msp, _ = pair
    with pytest.raises(ValueError, match="moving volume: spacing"):
        load_backend("sitk-demons", FrontEnd(SMALL)).register(f_img, fsp, m_img, (0.0, 1.0, 1.0))
    bad = f_img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="fixed volume: image has NaN"):
        load_backend("identity").register(bad, fsp, m_img, msp)


def test_ncc_guard_handles_what_neurite_asserts_on():
    torch.manual_seed(0)
    far = torch.rand(1, 1, 8, 16, 16) * 1e-3 + 1000.0  # flat, far from zero: rounding breaks [0, 1]
    other = torch.rand(1, 1, 8, 16, 16)
    loss = LocalNCCLoss((3, 5, 5))(far, other)
    assert torch.isfinite(loss) and 0.0 <= float(loss) <= 1.0
    a, b = torch.rand(2, 1, 8, 16, 16), torch.rand(2, 1, 8, 16, 16)
    plain = 1.0 - LocalNCCLoss((3, 5, 5))(a, b)
    np.testing.assert_allclose(float(plain), float(_clamped_local_ncc(a, b, (3, 5, 5), 1e-5).mean()), rtol=1e-4)
    assert float(LocalNCCLoss((3, 5, 5))(a, a)) < 0.01
