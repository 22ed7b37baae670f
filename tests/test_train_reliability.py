"""The segmentation trainer's guarantees: a NaN or inf stops it naming the step and the term and
never reaches a checkpoint; the run folder is locked; progress is printed when nobody watches a
terminal; bad options and a damaged last.pt are one-line errors; a failed fresh run leaves no
config.yaml behind."""
from __future__ import annotations

import math

import pytest
import torch

from cctr.seg.config import TrainConfig, apply_overrides
from cctr.seg.data.case import CaseError
from cctr.seg.guard import NonFiniteError
from cctr.seg.hooks import TrainerHook
from cctr.seg.runlock import RunLockedError, run_lock
from cctr.seg.train import train
from test_seg_train import _cfg, _dataset


class PoisonAt(TrainerHook):
    """Adds a NaN loss term to student a at the given steps."""

    name = "poison"

    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def losses(self, step, batch, outputs):
        if step in self.steps:
            return {"a": outputs["a"].logits.mean() * float("nan")}
        return {}


def test_a_nan_term_stops_training_naming_step_and_term_and_leaves_nothing(tmp_path):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run", iterations=6, val_every=100)   # no checkpoint before the end
    with pytest.raises(NonFiniteError, match=r"step 3.*a/poison") as info:
        train(cfg, dataset, split, hooks=(PoisonAt(2),), progress=False)
    assert isinstance(info.value, ValueError)  # the CLI shows it as one line, exit 2
    left = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != "tb")
    assert "config.yaml" not in left and not [n for n in left if n.endswith(".pt")]


def test_a_nan_after_a_checkpoint_keeps_the_resumable_run_and_its_clean_weights(tmp_path):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run", iterations=6, val_every=2)   # last.pt at every validation
    with pytest.raises(NonFiniteError):
        train(cfg, dataset, split, hooks=(PoisonAt(4),), progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4 and (tmp_path / "run" / "config.yaml").is_file()
    assert all(torch.isfinite(v).all() for m in state["students"].values() for v in m.values() if v.is_floating_point())


def test_skip_nonfinite_lets_a_few_bad_steps_pass(tmp_path, capsys):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run", iterations=4, skip_nonfinite=1)
    result = train(cfg, dataset, split, hooks=(PoisonAt(1),), progress=False)
    assert result.last_checkpoint.is_file()
    with pytest.raises(NonFiniteError):
        train(_cfg(tmp_path / "two", iterations=4, skip_nonfinite=1), dataset, split, hooks=(PoisonAt(1, 2),),
              progress=False)


def test_a_locked_run_folder_is_refused_before_anything_is_written(tmp_path):
    dataset, split = _dataset(tmp_path)
    out = tmp_path / "run"
    with run_lock(out, command="cctr train --out run"):
        with pytest.raises(RunLockedError, match="cctr train --out run"):
            train(_cfg(out), dataset, split, progress=False)
    assert not (out / "config.yaml").exists()
    train(_cfg(out), dataset, split, progress=False)  # free again once the holder is gone


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    dataset, split = _dataset(tmp_path)
    train(_cfg(tmp_path / "run"), dataset, split, progress=True)
    err = capsys.readouterr().err
    assert "train cct: step 1/4" in err and "step 4/4" in err
    assert "validation Dice" in err and "ETA" in err


@pytest.mark.parametrize("option", ["val_every=0", "iterations=0", "iterations=-5", "embedding_dim=0",
                                    "labeled_batch=0", "lr=0", "skip_nonfinite=-1"])
def test_out_of_range_options_are_refused_when_the_config_is_built(option):
    with pytest.raises(ValueError, match="out of range"):
        apply_overrides(TrainConfig(), [option])


def test_resume_from_a_damaged_last_pt_is_one_clear_error(tmp_path):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run", iterations=2)
    train(cfg, dataset, split, progress=False)
    (tmp_path / "run" / "last.pt").write_text("not a checkpoint")
    with pytest.raises(CaseError, match="last.pt"):
        train(cfg, dataset, split, resume=True, progress=False)
    state = {"config": {}, "students": {}}
    torch.save(state, tmp_path / "run" / "last.pt")
    with pytest.raises(CaseError, match="last.pt"):
        train(cfg, dataset, split, resume=True, progress=False)


def test_nan_weights_are_never_checkpointed(tmp_path):
    from cctr.seg.train import _atomic_save

    with pytest.raises(NonFiniteError):
        _atomic_save({"students": {"a": {"w": torch.tensor([1.0, math.nan])}}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
