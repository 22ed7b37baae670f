"""Plausibility of Fields (``reg.field.validate_field``), checked on every Field a backend
computes, and backend specs refused when parsed, before any work (negative iterations, a
malformed or unknown option), and a CUDA device on a machine without one refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cctr.reg.backends import check_device, load_backend
from cctr.reg.checkpoint import save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.field import Field, validate_field
from cctr.reg.model import RegistrationNet
from cctr.reg.spec import BackendSpec
from tests.reg_synthetic import Motion, volume, one_torch_thread  # noqa: F401 (autouse)

SHAPE = (6, 20, 24)


def test_real_transforms_pass():
    validate_field(Field.identity(SHAPE), "identity")
    m = np.eye(4)
    m[:3, :3] = np.diag([0.5, 1.7, 0.8])  # resampling 2x and a different field of view
    m[:3, 3] = [1.0, -3.0, 2.5]
    assert Field.from_affine(m, SHAPE, (4, 40, 20)).check("affine").fixed_shape == SHAPE


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.__setitem__((1, 2, 3, 4), np.nan), "NaN or inf at 1 voxel"),
    (lambda c: c.__setitem__((2, 0, 0, 0), np.inf), "NaN or inf"),
    (lambda c: c.__setitem__((2, 0, 0, 0), 60.0), "maps x to"),     # > one extent (24) beyond
    (lambda c: c.__setitem__((0, 0, 0, 0), -7.0), "maps z to"),
    (lambda c: c.__iadd__(np.random.default_rng(0).normal(0, 1, c.shape).astype(np.float32)), "not smooth"),
])
def test_damaged_fields_are_refused_naming_where(damage, message):
    coords = Field.identity(SHAPE).coords.copy()
    damage(coords)
    with pytest.raises(ValueError, match=message) as info:
        validate_field(Field(coords, SHAPE), "cache/ab.npz")
    assert str(info.value).startswith("cache/ab.npz: ")


def test_demons_fields_pass_the_check():
    spacing = (6.0, 1.6, 1.6)
    f_img, _ = volume((8, 40, 40), spacing)
    m_img, _ = volume((8, 40, 40), spacing, Motion(0.2, (0.0, 3.0, -2.0)))
    fld = load_backend("sitk-demons?iterations=5").register(f_img, spacing, m_img, spacing)
    validate_field(fld.dense(), "demons")  # register_many already checks; asserted here explicitly


@pytest.mark.parametrize("spec, message", [
    ("sitk-demons?iterations=-5", "iterations must be >= 1"),
    ("sitk-demons?sigma_mm=0", "sigma_mm must be > 0"),
    ("sitk-bspline?mesh_mm=-1", "mesh_mm must be > 0"),
    ("sitk-bspline?iterations=0", "iterations must be >= 1"),
    ("sitk-bspline?levels=0", r"unknown option\(s\) \['levels'\]"),   # a constant now
    ("sitk-demons?prealign=sideways", "prealign must be one of"),
    ("learned:missing.pt?refine=-1", "refine"),
    ("learned:missing.pt?device=tpu9", r"unknown option\(s\) \['device'\]"),   # load_backend's argument now
    ("learned:missing.pt?batch=0", r"unknown option\(s\) \['batch'\]"),   # LEARNED_BATCH now
])
def test_bad_options_are_refused_when_the_spec_is_parsed(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        BackendSpec.parse(spec)   # no file is looked at: missing.pt does not exist
    assert repr(spec) in str(info.value)


def test_a_device_this_machine_lacks_is_refused_by_name(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("tpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="has no CUDA; use cpu"):
        check_device("cuda")
    config = RegConfig.from_dict({"grid": {"shape": [16, 16, 16], "spacing": [4.0, 2.4, 2.4]},
                                  "net": {"nb_features": [4, 4, 4, 4]}})
    path = tmp_path / "net.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": RegistrationNet(config.net).state_dict()})
    with pytest.raises(ValueError, match="has no CUDA; use cpu"):
        load_backend(f"learned:{path}", device="cuda")
    assert check_device("cpu") == torch.device("cpu")
