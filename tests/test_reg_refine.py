"""``learned:CKPT?refine=N``: test-time Adam steps on the net's velocity field improve a pair's
image similarity over the net alone, keep the map regular and leave the net untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reg.backends import backend_params, load_backend, parse_spec
from reg.checkpoint import save_checkpoint
from reg.config import RegConfig
from reg.jacobian import regularity
from reg.losses import LocalNCCLoss
from reg.model import RegistrationNet
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
    refined_backend = load_backend(f"learned:{checkpoint}?refine=30&refine_lr=0.2&refine_scale=1&refine_fine=0")
    refined = refined_backend.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(refined, f_img, m_img) > _native_ncc(plain, f_img, m_img) + 0.02
    assert regularity(refined).folded_percent < 0.5
    # the net itself is not changed by refining: a second call gives the same Field
    np.testing.assert_allclose(refined_backend.register(f_img, fsp, m_img, msp).dense().coords, refined.coords, atol=1e-5)
    with torch.no_grad():   # as the registration oracle calls every backend
        np.testing.assert_allclose(refined_backend.register(f_img, fsp, m_img, msp).dense().coords, refined.coords, atol=1e-5)


def test_refine_options_are_checked_and_keyed(checkpoint):
    assert parse_spec(f"learned:{checkpoint}?refine=5").options == {"refine": "5"}
    with pytest.raises(ValueError, match="refine"):
        parse_spec(f"learned:{checkpoint}?refine=-1")
    with pytest.raises(ValueError, match="refine"):
        parse_spec(f"learned:{checkpoint}?refine_lr=0")
    # a refined backend is another backend for the Field disk cache
    assert backend_params(f"learned:{checkpoint}?refine=5")["refine"] == 5
    default = backend_params(f"learned:{checkpoint}")   # refined coarse to fine by default
    assert (default["refine"], default["refine_scale"], default["refine_fine"]) == (16, 2, 4)
    assert not {"refine", "refine_scale", "refine_fine"} & set(backend_params(f"learned:{checkpoint}?refine=0"))
    # 16 canonical-grid steps, the default before, keep the cache key they had
    assert {k: v for k, v in backend_params(f"learned:{checkpoint}?refine_scale=1&refine_fine=0").items()
            if k.startswith("refine")} == {"refine": 16, "refine_lr": 0.1}
    with pytest.raises(ValueError, match="refine_scale"):
        parse_spec(f"learned:{checkpoint}?refine_scale=0")
    with pytest.raises(ValueError, match="refine_scale=3 must divide"):
        load_backend(f"learned:{checkpoint}?refine_scale=3")   # the grid is 16 x 32 x 32


def test_coarse_refinement_also_improves_similarity_for_less_work(checkpoint, shifted):
    f_img, fsp, m_img, msp, plain = shifted
    coarse = load_backend(f"learned:{checkpoint}?refine=30&refine_lr=0.2&refine_scale=2&refine_fine=0")
    refined = coarse.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(refined, f_img, m_img) > _native_ncc(plain, f_img, m_img) + 0.02
    assert regularity(refined).folded_percent < 0.5
    then_fine = load_backend(f"learned:{checkpoint}?refine=30&refine_lr=0.2&refine_scale=2&refine_fine=5")
    finer = then_fine.register(f_img, fsp, m_img, msp).dense()
    assert _native_ncc(finer, f_img, m_img) > _native_ncc(refined, f_img, m_img)
    assert backend_params(f"learned:{checkpoint}?refine_fine=5")["refine_fine"] == 5


def test_a_correction_of_zero_steps_returns_the_net_alone_at_any_scale(checkpoint):
    from reg.backends import Refinement, refine_displacement
    from reg.checkpoint import load_model

    net, config = load_model(checkpoint)
    fixed, moving = torch.rand(1, 1, 16, 32, 32), torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        alone, _ = net(fixed, moving)
    for scale in (1, 2):
        still = refine_displacement(net, fixed, moving, Refinement(0, 0.1, "ncc", (3, 7, 7), 1.0, scale))
        torch.testing.assert_close(still, alone, atol=1e-6, rtol=0)
    # coarse then fine is the two passes in turn; at scale 1 the fine steps just add to the others
    assert Refinement(8, 0.1, "ncc", (3, 7, 7), 1.0, 2, 4).levels == ((2, 8), (1, 4))
    assert Refinement(8, 0.1, "ncc", (3, 7, 7), 1.0, 1, 4).levels == ((1, 12),)
