"""A run folder is identified by its content, not its path: ``--resume`` continues a run named
by another path (relative against absolute), moved, or copied; a real change of options is
still refused."""
from __future__ import annotations

import shutil
from dataclasses import replace

import torch

import cctr.seg.train as seg_train
from cctr.joint.app.cli import main
from cctr.joint.config import JointConfig, with_backend
from cctr.seg.run_identity import config_changes, moved_roots
from test_exit_statuses import SPLIT, TINY
from layouts import write_nnunet

CASES = tuple(f"patient00{i}_{f}" for i in range(1, 6) for f in ("ED", "ES"))


def test_the_location_is_not_part_of_a_runs_identity():
    old = replace(with_backend(JointConfig(), "learned:/a/bench/reg/best.pt?refine=0", "/a/bench/reg-cache"),
                  out_dir="/a/bench/runs/cctr/seed-0")
    moved = replace(with_backend(JointConfig(), "learned:/b/x/bench/reg/best.pt?refine=0", "/b/x/bench/reg-cache"),
                    out_dir="/b/x/bench/runs/cctr/seed-0")
    assert moved_roots(old.out_dir, moved.out_dir) == ("/a", "/b/x")
    assert config_changes(old, moved) == []
    assert config_changes(old, replace(moved, out_dir="runs/cctr/seed-0")) == ["oracle.backend", "oracle.cache"]
    elsewhere = with_backend(moved, "learned:/other/best.pt?refine=0")
    assert config_changes(old, elsewhere) == ["oracle.backend"]
    assert config_changes(old, replace(moved, iterations=7)) == ["iterations"]


def test_resume_continues_a_run_moved_and_named_by_another_path(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_nnunet(data, labeled=CASES, shape=(3, 24, 28), spacing=(8.0, 1.5, 1.25), split=SPLIT)
    monkeypatch.chdir(tmp_path)
    real_next = seg_train.SliceSampler.next_batch
    calls = {"n": 0}

    def stop_at_step_3(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(seg_train.SliceSampler, "next_batch", stop_at_step_3)
    args = ["train", "--data", "data", "--labeled", "1", "--method", "ct", *TINY]
    assert main([*args, "--out", "runs/a"]) == 130          # relative: config.yaml says runs/a
    monkeypatch.setattr(seg_train.SliceSampler, "next_batch", real_next)
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "copy")
    shutil.move(tmp_path / "runs" / "a", tmp_path / "moved")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "moved"), "--resume"]) == 0, capsys.readouterr().err
    assert main([*args, "--out", "copy", "--resume"]) == 0, capsys.readouterr().err
    one, two = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("moved", "copy"))
    assert one["step"] == two["step"] == 4
    for key, value in one["students"]["a"].items():
        assert torch.equal(value, two["students"]["a"][key])
    assert main([*args, "--out", "copy", "--resume", "--set", "iterations=6"]) == 2
    assert "changed: ['iterations']" in capsys.readouterr().err
