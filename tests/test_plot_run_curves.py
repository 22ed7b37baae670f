"""``scripts/plot_run_curves.py``: a run folder's TensorBoard log drawn as the demo's curves figure,
and a clear refusal of a folder that is not a run."""
from __future__ import annotations

import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.scripts_module import load_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(folder, tags):
    with SummaryWriter(str(folder)) as writer:
        for step in (100, 200):
            for tag in tags:
                writer.add_scalar(tag, step / 1000, step)


def test_a_run_folder_becomes_a_png_with_or_without_the_pretraining_log(tmp_path, capsys):
    plot = load_script("plot_run_curves")
    run = tmp_path / "run"
    write_log(run / "tb", ["loss/total", "loss/a/sup", "val_a/dice", "val_b/dice", "val_gate/registration_dice"])
    write_log(tmp_path / "reg" / "tb", ["loss/total", "val/dice"])
    for extra, name in (([], "alone.png"), (["--reg-log", str(tmp_path / "reg" / "tb")], "with-reg.png")):
        assert plot.main(["--run", str(run), "--out", str(tmp_path / "fig" / name), *extra]) == 0
        assert (tmp_path / "fig" / name).read_bytes().startswith(PNG_MAGIC)
    assert str(tmp_path / "fig" / "with-reg.png") in capsys.readouterr().out


def test_a_folder_without_a_log_is_refused_by_name(tmp_path, capsys):
    plot = load_script("plot_run_curves")
    with pytest.raises(SystemExit):
        plot.main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert "nothing: no tb/ folder here" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
