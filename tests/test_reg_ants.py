"""The optional ANTs SyN backend (``ants-syn``).

Everywhere: without antspyx, asking for the backend fails with an error naming the extra to
install. Where antspyx imports (a separate environment, since it pins numpy<2.4 and
scipy<1.16), the real registration is checked against pairs with a known answer: a
translation comes back in the Field convention (sign and axis order), labels improve on
identity, two runs agree bit for bit, and the border keeps the motion. Without antspyx those
tests are reported as skipped, with the reason.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile

import numpy as np
import pytest

import cctr.reg.classical
from cctr.reg.backends import load_backend
from cctr.reg.classical import SYN_PAD, ants_syn
from cctr.reg.field import Field, voxel_grid
from cctr.reg.grid import CanonicalGrid
from cctr.reg.placement import FrontEnd
from tests.reg_synthetic import Motion, one_torch_thread, true_map, volume  # noqa: F401 (autouse)

HAVE_ANTS = importlib.util.find_spec("ants") is not None
SHAPE, SPACING = (12, 48, 48), (4.0, 2.0, 2.0)  # small canonical-like image pair, (z, y, x) mm


def _hide_ants(monkeypatch) -> None:
    """Make ``import ants`` fail, so the missing-extra error is tested where antspyx is installed too."""
    if HAVE_ANTS:
        monkeypatch.setitem(sys.modules, "ants", None)


def test_missing_antspyx_names_the_extra_to_install(monkeypatch):
    _hide_ants(monkeypatch)
    for call in (lambda: load_backend("ants-syn"), lambda: load_backend("ants-syn?prealign=none"),
                 lambda: ants_syn(np.zeros(SHAPE), np.zeros(SHAPE), SPACING)):
        with pytest.raises(ImportError) as info:
            call()
        message = str(info.value)
        assert "cctr[ants]" in message and "antspyx" in message and "ants-syn" in message


def test_syn_takes_no_options_but_prealign(monkeypatch):
    # seed and margin are constants (SYN_SEED, SYN_PAD): the spec refuses them before any import
    _hide_ants(monkeypatch)
    for spec in ("ants-syn?seed=3", "ants-syn?pad=2"):
        with pytest.raises(ValueError, match=r"unknown option\(s\)"):
            load_backend(spec)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * ((a == c) & (b == c)).sum() / max(1, (a == c).sum() + (b == c).sum()) for c in (1, 2, 3)]))


def _shifted_pair(shift_mm, offset_mm=(0.0, 0.0, 0.0)):
    """Fixed and moving images of SHAPE, the moving scene shifted by ``shift_mm`` relative to
    the fixed one, and the true Field from fixed voxels to moving voxels."""
    off = np.asarray(offset_mm, float)
    f_img, f_lab = volume(SHAPE, SPACING, Motion(0.0, tuple(off)))
    m_img, m_lab = volume(SHAPE, SPACING, Motion(0.0, tuple(off + np.asarray(shift_mm, float))))
    truth = Field.from_affine(true_map(SHAPE, SPACING, SHAPE, SPACING, Motion(0.0, tuple(shift_mm))), SHAPE, SHAPE)
    return f_img, f_lab, m_img, m_lab, truth


# Without antspyx (the project's own environment, and CI) these are reported as skipped with
# the reason; run them in an environment with the extra (README: ANTs SyN).
needs_ants = pytest.mark.skipif(not HAVE_ANTS, reason="antspyx not installed: needs its own env (pip install 'cctr[ants]')")


@needs_ants
def test_translation_comes_back_in_field_convention():
    shift_mm = (4.0, 6.0, -6.0)  # (z, y, x): one slice down, three voxels along +y, three along -x
    f_img, f_lab, m_img, m_lab, truth = _shifted_pair(shift_mm)
    disp = ants_syn(f_img, m_img, SPACING)
    assert disp.shape == (3, *SHAPE) and disp.dtype == np.float32
    field = Field(voxel_grid(SHAPE) + disp, SHAPE)
    where = f_lab > 0  # the image has structure there; the flat background carries no motion
    expected = np.asarray(shift_mm) / np.asarray(SPACING)
    got = np.median(disp[:, where], axis=1)
    np.testing.assert_allclose(got, expected, atol=0.35)  # sign and axis order both matter
    error = np.linalg.norm(field.coords - truth.coords, axis=0)[where]
    assert error.mean() < 0.4
    assert _dice(field.warp_labels(m_lab, 4), f_lab) > _dice(m_lab, f_lab) + 0.4

@needs_ants
def test_backend_beats_identity_end_to_end_and_is_deterministic():
    f_shape, f_sp = (8, 48, 40), (6.0, 1.5, 1.5)
    m_shape, m_sp = (9, 40, 44), (5.5, 1.8, 1.8)
    f_img, f_lab = volume(f_shape, f_sp)
    m_img, m_lab = volume(m_shape, m_sp, Motion(np.deg2rad(15.0), (0.0, 4.0, -3.0)))
    env = {k: os.environ.get(k) for k in ("ANTS_RANDOM_SEED", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}
    backend = load_backend("ants-syn?prealign=none", FrontEnd(CanonicalGrid((16, 32, 32), (4.0, 2.4, 2.4))))
    assert backend.params["kind"] == "ants-syn" and backend.params["prealign"]["method"] == "none"
    first = backend.register(f_img, f_sp, m_img, m_sp)
    again = backend.register(f_img, f_sp, m_img, m_sp)
    assert np.array_equal(first.coords, again.coords)
    assert first.fixed_shape == f_shape and first.moving_shape == m_shape
    assert {k: os.environ.get(k) for k in env} == env  # seed and thread settings do not leak
    base = _dice(load_backend("identity").register(f_img, f_sp, m_img, m_sp).warp_labels(m_lab, 4), f_lab)
    assert _dice(first.warp_labels(m_lab, 4), f_lab) > base + 0.2

@needs_ants
def test_motion_is_kept_at_the_border_and_no_files_are_left(tmp_path, monkeypatch):
    # the scene sits against the low-y border, so one labelled blob touches it
    f_img, f_lab, m_img, _, truth = _shifted_pair((0.0, 4.0, -4.0), offset_mm=(0.0, -30.0, 0.0))
    near = np.zeros(SHAPE, dtype=bool)
    near[:, :6] = True
    where = (f_lab > 0) & near
    assert where.sum() > 50
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    errors = {}
    for pad in (0, SYN_PAD):
        monkeypatch.setattr(cctr.reg.classical, "SYN_PAD", pad)
        field = Field(voxel_grid(SHAPE) + ants_syn(f_img, m_img, SPACING), SHAPE)
        assert np.isfinite(field.coords).all()
        errors[pad] = float(np.linalg.norm(field.coords - truth.coords, axis=0)[where].mean())
    # SyN pins its displacement to zero on the image's outer voxels; the margin moves that
    # pin off the real grid, so the structure at the border follows the shift
    assert errors[SYN_PAD] < 0.7 < errors[0]
    assert list(tmp_path.iterdir()) == []  # the transforms ANTs wrote are gone
