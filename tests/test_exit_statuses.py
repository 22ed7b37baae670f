"""Every failure a user can meet is one line and a status of its own (joint.app.exits): a file
in the way of a folder, a read-only folder, a full disk at a checkpoint, a missing optional
extra, an impossible configuration, a CUDA device the machine lacks, and Ctrl-C (130, a line
naming --resume, every file complete, and the resumed run equals an uninterrupted one)."""
from __future__ import annotations

import builtins
import errno
import sys
from pathlib import Path

import pytest
import torch

import cctr.seg.train as seg_train
from cctr.joint.app import exits
from cctr.joint.app.cli import main
from layouts import write_nnunet

CASES = tuple(f"patient00{i}_{f}" for i in range(1, 6) for f in ("ED", "ES"))
SPLIT = {"train": ["patient001", "patient002", "patient003"], "val": ["patient004"], "test": ["patient005"],
         "labeled_sets": {"1": ["patient001"]}}
TINY = ["--set", "image_size=[32,32]", "--set", "labeled_batch=2", "--set", "unlabeled_batch=2",
        "--set", "student_a.widths=[4,8]", "--set", "student_b.kind=unet", "--set", "student_b.widths=[4,8]",
        "--set", "iterations=4", "--set", "val_every=2", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exits") / "data"
    write_nnunet(root, labeled=CASES, shape=(3, 24, 28), spacing=(8.0, 1.5, 1.25), split=SPLIT)
    return root


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--labeled", "1", "--method", "ct", "--out", str(out), *TINY, *extra])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_file_where_the_log_folder_goes(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tb").write_text("not a folder")
    assert train(data, run) == exits.CANNOT_WRITE == 73
    assert f"{run / 'tb'}: a file is in the way where a folder is needed" in one_line(capsys)


def test_a_read_only_run_folder(data, tmp_path, monkeypatch, capsys):
    # root ignores permission bits, so the file system's answer is given here as it would come
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert train(data, tmp_path / "ro" / "run") == exits.CANNOT_WRITE
    assert "ro/run: read-only file system; move it away or choose another place" in one_line(capsys)


def test_a_file_where_the_field_cache_goes(data, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    code = train(data, tmp_path / "run", "--method", "cctr-rsl", "--reg-backend", "identity",
                 "--set", f"oracle.cache={cache}")
    assert code == exits.CANNOT_WRITE
    assert f"{cache}/" in (line := one_line(capsys)) and "a file where a folder is needed" in line
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_full_disk_at_a_checkpoint_names_it_and_leaves_no_half_file(data, tmp_path, monkeypatch, capsys):
    # /dev/full answers every write with ENOSPC, as a full disk does
    real_open = builtins.open
    monkeypatch.setattr(seg_train, "open", lambda path, mode="r": real_open("/dev/full", mode), raising=False)
    run = tmp_path / "run"
    assert train(data, run) == exits.IO_ERROR == 74
    assert f"{run / 'best.pt'}: no space left on the device; free some space" in one_line(capsys)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".pt") or p.name.startswith(".tmp-cctr-")]


def test_a_missing_optional_extra(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ants", None)   # antspyx absent, whatever this machine has
    code = train(data, tmp_path / "run", "--method", "cctr-rsl", "--reg-backend", "ants-syn")
    assert code == exits.MISSING_EXTRA == 69
    assert "needs the optional extra 'ants'" in one_line(capsys)


def test_impossible_and_bad_sizes(data, tmp_path, capsys):
    assert train(data, tmp_path / "a", "--set", "image_size=[0,0]") == exits.BAD_INPUT
    assert "image_size (0, 0) must be two positive sides" in one_line(capsys)
    assert train(data, tmp_path / "b", "--set", "labeled_batch=100000") == exits.IMPOSSIBLE_CONFIG == 78
    line = one_line(capsys)
    assert "labeled_batch 100000" in line and "GiB per training step, more than the" in line
    assert not (tmp_path / "b" / "config.yaml").exists()


def test_cuda_in_reg_train_without_cuda_is_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["reg", "train", "--data", str(data), "--out", str(tmp_path / "reg"), "--set", "train.device=cuda"])
    assert code == exits.BAD_INPUT
    assert "device: 'cuda' asked for" in one_line(capsys)
    assert not (tmp_path / "reg").exists()


def test_ctrl_c_exits_130_naming_resume_and_the_resumed_run_equals_an_uninterrupted_one(data, tmp_path, monkeypatch,
                                                                                          capsys):
    assert train(data, tmp_path / "whole") == 0
    capsys.readouterr()
    real_next = seg_train.SliceSampler.next_batch
    calls = {"n": 0}

    def interrupt_at_step_3(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(seg_train.SliceSampler, "next_batch", interrupt_at_step_3)
    run = tmp_path / "run"
    assert train(data, run) == exits.INTERRUPTED == 130
    assert "interrupted; every file written so far is complete; add --resume" in one_line(capsys)
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-cctr-")]
    monkeypatch.setattr(seg_train.SliceSampler, "next_batch", real_next)
    assert train(data, run, "--resume") == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["students"]
    resumed = torch.load(run / "last.pt", weights_only=True)["students"]
    for student in whole:
        for key, value in whole[student].items():
            assert torch.equal(value, resumed[student][key]), (student, key)
