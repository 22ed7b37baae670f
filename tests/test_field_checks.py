"""Plausibility of Fields (``reg.field.validate_field``), checked on every Field a backend
computes, and backend specs refused when parsed, before any work: negative iterations, a CUDA
device on a machine without one, a malformed option."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cctr.reg.backends import load_backend, parse_spec
from cctr.reg.field import Field, validate_field
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
    fld = load_backend("sitk-demons?iterations=5&levels=1").register(f_img, spacing, m_img, spacing)
    validate_field(fld.dense(), "demons")  # register_many already checks; asserted here explicitly


@pytest.mark.parametrize("spec, message", [
    ("sitk-demons?iterations=-5", "iterations and levels must be >= 1"),
    ("sitk-demons?sigma_mm=0", "sigma_mm must be > 0"),
    ("sitk-bspline?mesh_mm=-1", "mesh_mm must be > 0"),
    ("sitk-bspline?levels=0", "levels must be >= 1"),
    ("sitk-demons?prealign=sideways", "pre-alignment"),
    ("learned:missing.pt?device=tpu9", "not a torch device"),
    ("learned:missing.pt?batch=0", "batch must be >= 1"),
])
def test_bad_options_are_refused_when_the_spec_is_parsed(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_spec(spec)
    assert repr(spec) in str(info.value)


def test_a_cuda_device_without_cuda_is_refused_before_the_checkpoint_is_read(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="has no CUDA; use device=cpu"):
        load_backend("learned:does/not/exist.pt?device=cuda")  # not FileNotFoundError: refused first
