"""``learned:CKPT?refine=N`` (:mod:`reg.refine`): test-time Adam steps on the net's velocity field
improve a pair's image similarity over the net alone, keep the map regular and leave the net untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cctr.reg.backends import load_backend
from cctr.reg.checkpoint import save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.jacobian import regularity
from cctr.reg.losses import LocalNCCLoss, RegistrationLoss
from cctr.reg.model import RegistrationNet
from cctr.reg.refine import RefineConfig, compose, refine_displacement
from cctr.reg.spec import BackendSpec
from tests.reg_synthetic import Motion, volume, one_torch_thread  # noqa: F401 (autouse)

FIXED = ((8, 48, 40), (6.0, 1.5, 1.5))
MOVING = ((8, 48, 40), (6.0, 1.5, 1.5))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # prealign off: the deformation left to find is the whole rigid motion, which the untrained
    # net (near-zero flow) leaves alone and refinement has to recover
    config = RegConfig.from_dict({"grid": {"shape": [16, 32, 32], "spacing": [4.0, 2.4, 2.4]},
                                  "prealign": {"method": "none"}, "net": {"nb_features": [4, 4, 4, 4]}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": RegistrationNet(config.net).state_dict()})
    return path


def _native_ncc(field, fixed: np.ndarray, moving: np.ndarray) -> float:
    warped = torch.from_numpy(field.warp_image(moving))[None, None]
    return 1.0 - float(LocalNCCLoss((3, 7, 7))(warped, torch.from_numpy(fixed)[None, None]))


@pytest.fixture(scope="module")
def shifted(checkpoint):
    """A pair the rigid shift of which the untrained net leaves alone, and the net's own Field."""
    (fs, fsp), (ms, msp) = FIXED, MOVING
    f_img, _ = volume(fs, fsp)
    m_img, _ = volume(ms, msp, Motion(0.0, (0.0, 4.0, -3.0)))
    plain = load_backend(f"learned:{checkpoint}?refine=0").register(f_img, fsp, m_img, msp).dense()
    return f_img, fsp, m_img, msp, plain


def test_refinement_improves_similarity_and_keeps_the_map_regular(checkpoint, shifted):
    f_img, fsp, m_img, msp, plain = shifted
    refined_backend = load_backend(f"learned:{checkpoint}?refine=30&refine_scale=1&refine_fine=0")
    refined = refined_backend.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(refined, f_img, m_img) > _native_ncc(plain, f_img, m_img) + 0.02
    assert regularity(refined).folded_percent < 0.5
    # the net itself is not changed by refining: a second call gives the same Field
    np.testing.assert_allclose(refined_backend.register(f_img, fsp, m_img, msp).dense().coords, refined.coords, atol=1e-5)
    with torch.no_grad():   # as the registration oracle calls every backend
        np.testing.assert_allclose(refined_backend.register(f_img, fsp, m_img, msp).dense().coords, refined.coords, atol=1e-5)


def test_refine_options_are_checked_and_keyed(checkpoint):
    assert BackendSpec.parse(f"learned:{checkpoint}?refine=5").refine == RefineConfig(steps=5)
    parsed = BackendSpec.parse(f"learned:{checkpoint}?refine=8&refine_scale=1&refine_fine=0").refine
    assert (parsed.steps, parsed.scale, parsed.fine_steps) == (8, 1, 0)
    with pytest.raises(ValueError, match="refine"):
        BackendSpec.parse(f"learned:{checkpoint}?refine=-1")
    with pytest.raises(ValueError, match="refine_scale"):
        BackendSpec.parse(f"learned:{checkpoint}?refine_scale=0")
    with pytest.raises(ValueError, match="not a valid int"):
        BackendSpec.parse(f"learned:{checkpoint}?refine=0.5")
    # options of earlier versions are unknown now: the learning rate is RefineConfig's, the fine
    # steps always correct a map composed on the fixed side
    for gone in ("refine_lr=0.2", "refine_fine_field=velocity", "refine_fine_field=composed"):
        with pytest.raises(ValueError, match=r"unknown option\(s\)"):
            BackendSpec.parse(f"learned:{checkpoint}?{gone}")
    # a refined backend is another backend for the Field disk cache
    assert load_backend(f"learned:{checkpoint}?refine=5").params["refine"]["steps"] == 5
    default = load_backend(f"learned:{checkpoint}").params["refine"]   # refined coarse to fine by default
    assert (default["steps"], default["scale"], default["fine_steps"]) == (16, 2, 4)
    assert "refine" not in load_backend(f"learned:{checkpoint}?refine=0").params
    assert load_backend(f"learned:{checkpoint}?refine_fine=5").params["refine"]["fine_steps"] == 5
    with pytest.raises(ValueError, match="refine_scale=3 must divide"):
        load_backend(f"learned:{checkpoint}?refine_scale=3")   # the grid is 16 x 32 x 32


def test_coarse_refinement_also_improves_similarity_for_less_work(checkpoint, shifted):
    f_img, fsp, m_img, msp, plain = shifted
    coarse = load_backend(f"learned:{checkpoint}?refine=30&refine_scale=2&refine_fine=0")
    refined = coarse.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(refined, f_img, m_img) > _native_ncc(plain, f_img, m_img) + 0.02
    assert regularity(refined).folded_percent < 0.5
    # then a few steps on a map composed on the fixed side, on the canonical grid
    then_fine = load_backend(f"learned:{checkpoint}?refine=30&refine_scale=2&refine_fine=5")
    finer = then_fine.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(finer, f_img, m_img) > _native_ncc(refined, f_img, m_img)
    assert regularity(finer).folded_percent < 0.5


def test_a_correction_of_zero_steps_returns_the_net_alone_at_any_scale(checkpoint):
    from cctr.reg.checkpoint import load_model

    net, config = load_model(checkpoint)
    loss = RegistrationLoss(config.loss)
    fixed, moving = torch.rand(1, 1, 16, 32, 32), torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        alone, _ = net(fixed, moving)
    for scale in (1, 2):   # no velocity steps and no composed steps leave the net's map as it is
        cfg = RefineConfig(steps=0, scale=scale, fine_steps=0)
        assert not cfg.active and cfg.described() == {}
        still = refine_displacement(net, fixed, moving, cfg, loss)
        torch.testing.assert_close(still, alone, atol=1e-6, rtol=0)
    # and some steps do move it
    moved = refine_displacement(net, fixed, moving, RefineConfig(steps=2, scale=2, fine_steps=2), loss)
    assert float((moved - alone).abs().max()) > 1e-3


def test_the_fine_map_is_composed_on_the_fixed_side():
    """``compose(disp0, u)(c) = u(c) + disp0(c + u(c))``: exact for a field linear in z."""
    z = torch.arange(8.0)[:, None, None].expand(8, 6, 5)
    disp0 = torch.stack([0.1 * z, torch.full_like(z, 2.0), torch.zeros_like(z)])[None]   # (1, 3, Z, Y, X)
    u = torch.zeros_like(disp0)
    u[:, 0], u[:, 2] = 0.5, -0.25   # half a voxel along z, a quarter back along x
    out = compose(disp0, u)
    inner = (slice(0, 7), slice(None), slice(1, None))   # where c + u(c) stays on the grid
    torch.testing.assert_close(out[0, 0][inner], (0.5 + 0.1 * (z + 0.5))[inner])
    torch.testing.assert_close(out[0, 1], torch.full_like(z, 2.0))
    torch.testing.assert_close(out[0, 2], torch.full_like(z, -0.25))
    # past the last slice, border padding keeps the edge's displacement (zeros would halve it)
    torch.testing.assert_close(out[0, 0, 7], torch.full_like(z[7], 0.5 + 0.1 * 7))
    torch.testing.assert_close(compose(disp0, torch.zeros_like(disp0)), disp0)


def test_a_pair_refined_in_a_batch_is_refined_as_alone(checkpoint, shifted):
    """The refinement loss is the sum of the pairs' own losses, so what a pair gets does not
    depend on the pairs sharing its call (up to float noise): what the batched refresh of
    ``cctr-coupled`` relies on."""
    f_img, fsp, m_img, msp, _ = shifted
    other, _ = volume(FIXED[0], FIXED[1], Motion(0.0, (0.0, -3.0, 2.0)))
    backend = load_backend(f"learned:{checkpoint}?refine=8&refine_fine=2")
    alone = backend.register(f_img, fsp, m_img, msp).disp.astype(np.float32)
    together = backend.register_many([(other, fsp, m_img, msp), (f_img, fsp, m_img, msp)])[1].disp.astype(np.float32)
    assert np.abs(alone).max() > 0.5   # the pair was refined by a fair amount
    np.testing.assert_allclose(together, alone, atol=2e-3)
