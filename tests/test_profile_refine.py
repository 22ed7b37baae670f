"""``scripts/profile_refine.py``: every configuration and pass of the refinement is timed on a
checkpoint's own grid, and a bad checkpoint or scale is a clear error, not a traceback."""
from __future__ import annotations

import math

import pytest
import torch

from cctr.reg.checkpoint import save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.model import RegistrationNet
from scripts_module import load_script
from tests.reg_synthetic import one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    config = RegConfig.from_dict({"grid": {"shape": [16, 16, 32], "spacing": [4.0, 2.4, 2.4]},
                                  "net": {"nb_features": [4, 4, 4, 4]}})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": RegistrationNet(config.net).state_dict()})
    return path


def test_every_part_is_timed(tiny_checkpoint, capsys):
    script = load_script("profile_refine")
    assert script.main(["--ckpt", str(tiny_checkpoint), "--repeats", "1", "--steps", "2", "--fine", "1"]) == 0
    out = capsys.readouterr().out
    assert "canonical grid (16, 16, 32)" in out
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| part") and not line.startswith("| ---")}
    assert set(rows) == {"net alone", "2 coarse", "2 coarse + 1 fine, velocity", "2 coarse + 1 fine, composed",
                         "coarse pass", "fine pass, velocity", "fine pass, composed"}
    assert all(math.isfinite(v) for v in rows.values())
    assert all(rows[k] > 0 for k in ("net alone", "2 coarse", "2 coarse + 1 fine, velocity", "2 coarse + 1 fine, composed"))


def test_bad_input_names_the_file_or_the_option(tiny_checkpoint, tmp_path, capsys):
    script = load_script("profile_refine")
    missing = tmp_path / "none.pt"
    assert script.main(["--ckpt", str(missing)]) == 2
    assert f"{missing}: registration checkpoint not found" in capsys.readouterr().err
    assert script.main(["--ckpt", str(tiny_checkpoint), "--scale", "3"]) == 2
    assert "--scale 3 must divide the checkpoint's canonical grid (16, 16, 32)" in capsys.readouterr().err
