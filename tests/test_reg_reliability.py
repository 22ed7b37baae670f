"""``cctr reg train`` when things go wrong: a diverging run stops naming the step and the loss
term and writes no checkpoint (nor a config.yaml); a locked folder is refused naming the
holder; progress reaches a log that is not a terminal; YAML numbers like ``1e-4`` are numbers
and a wrong type is one line; a corrupt last.pt on --resume is one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from cctr.joint.app.cli import main
from cctr.reg.config import RegConfig
from cctr.seg.config import load_config as load_any_config
from cctr.seg.runlock import run_lock
from cctr.seg.runlock import RunLockedError
from tests.reg_synthetic import one_torch_thread  # noqa: F401 (autouse)
from tests.test_cli_reg import TINY_CONFIG, _write_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    _write_folder(root, 7)
    return root


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(TINY_CONFIG.replace("val_pairs: 2", "val_pairs: 2" + extra))
    return path


def _train(folder: Path, out: Path, config: Path, *more: str) -> int:
    return main(["reg", "train", "--data", str(folder), "--out", str(out), "--config", str(config), *more])


def test_a_diverging_run_stops_naming_step_and_term_and_writes_nothing(folder, tmp_path, capsys):
    config = _config(tmp_path, ", learning_rate: 1.0e+6, steps: 6")
    out = tmp_path / "run"
    assert _train(folder, out, config) == 2
    err = capsys.readouterr().err
    assert "cctr: error: step " in err and "loss term '" in err and "is NaN" in err and "Traceback" not in err
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
    assert not (out / "config.yaml").exists()  # a failed fresh run leaves no config behind
    assert not list(out.glob(".tmp-*"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # validation of the diverged net
def test_bad_steps_can_be_skipped_up_to_a_budget(folder, tmp_path, capsys):
    config = _config(tmp_path, ", learning_rate: 1.0e+6, steps: 4")
    assert _train(folder, tmp_path / "run", config, "--skip-nonfinite", "1") == 2
    err = capsys.readouterr().err
    assert "; skipping the step (1 of 1 allowed)" in err and "cctr: error: step " in err


def test_a_locked_run_folder_is_refused_naming_the_holder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    with run_lock(out, command="cctr reg train --out elsewhere"):
        assert _train(folder, out, _config(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "another run is writing here" in err and "cctr reg train --out elsewhere" in err
    assert not (out / "config.yaml").exists()
    assert issubclass(RunLockedError, ValueError)


def test_progress_lines_reach_a_log_that_is_not_a_terminal(folder, tmp_path, capsys):
    assert _train(folder, tmp_path / "run", _config(tmp_path)) == 0
    err = capsys.readouterr().err  # captured: not a tty
    assert "reg train: step 1/2 loss " in err and "reg train: step 2/2 " in err
    assert "reg train: step 2/2 validation Dice " in err


def test_yaml_numbers_without_a_dot_are_numbers_and_wrong_types_are_one_line(tmp_path, folder, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train: {learning_rate: 1e-4, steps: 2e3}\n")
    config = load_any_config(path, RegConfig())
    assert config.train.learning_rate == 1e-4 and config.train.steps == 2000
    assert isinstance(config.train.steps, int)
    for text, message in [("train: {learning_rate: fast}", "train.learning_rate: expected float, got 'fast'"),
                          ("train: {steps: 2.5}", "train.steps: expected an integer"),
                          ("grid: {shape: [16, 32]}", "grid.shape: expected 3 values"),
                          ("train: {device: [3]}", "train.device: expected a string")]:
        path.write_text(text + "\n")
        with pytest.raises(ValueError, match=message):
            load_any_config(path, RegConfig())
        assert _train(folder, tmp_path / "run", path) == 2
        assert message.split(":")[0] in capsys.readouterr().err
    assert RegConfig.from_dict(RegConfig().to_dict()) == RegConfig()


def test_resume_from_a_corrupt_last_pt_is_one_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x80\x02garbage")
    assert main(["reg", "train", "--data", str(folder), "--out", str(out), "--resume"]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
