"""Atomic writers (``cctr.seg.atomic``, ``cctr.reg.atomic``): the final file has the mode the umask gives,
not mkstemp's 0600, and temporary files left by a killed writer are removed by the next
write in that folder while those of live writers stay."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cctr.reg.atomic
import cctr.seg.atomic
from cctr.reg.checkpoint import save_checkpoint


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test, restore the old one after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_atomic_writer_gives_the_umask_mode(tmp_path, umask, mask, expected):
    umask(mask)
    text = cctr.seg.atomic.write_text_atomic(tmp_path / "a" / "split.json", "{}")
    with cctr.seg.atomic.atomic_path(tmp_path / "a" / "vol.nii.gz") as tmp:
        Path(tmp).write_bytes(b"x")
    with cctr.reg.atomic.atomic_path(tmp_path / "b" / "note.txt") as tmp:
        Path(tmp).write_text("x")
    ckpt = save_checkpoint(tmp_path / "b" / "last.pt", {"model": {"w": torch.zeros(2)}})
    for path in (text, tmp_path / "a" / "vol.nii.gz", tmp_path / "b" / "note.txt", ckpt):
        assert _mode(path) == expected, path


@pytest.mark.parametrize("atomic", [cctr.seg.atomic, cctr.reg.atomic])
def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path, atomic):
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "x.pt") as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("atomic", [cctr.seg.atomic, cctr.reg.atomic])
def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path, atomic):
    old = atomic._STARTED - 60  # written before this process started
    dead = tmp_path / f".tmp-cctr-{_dead_pid()}-0000abcd.pt"      # a kill -9 during a save
    live = tmp_path / f".tmp-cctr-{os.getppid()}-0000abcd.pt"     # a live writer's: kept
    recent = tmp_path / f".tmp-cctr-{_dead_pid()}-0000beef.pt"    # newer than us: kept
    foreign = tmp_path / ".tmp-somebody-else.pt"                  # not ours: kept
    for p in (dead, live, recent, foreign):
        p.write_bytes(b"")
    for p in (dead, live, foreign):
        os.utime(p, (old, old))
    with atomic.atomic_path(tmp_path / "last.pt") as tmp:
        Path(tmp).write_bytes(b"ok")
    assert not dead.exists()
    assert live.exists() and recent.exists() and foreign.exists()
    assert (tmp_path / "last.pt").read_bytes() == b"ok"


def test_discard_on_failure_removes_a_fresh_runs_config_only_before_its_first_checkpoint(tmp_path):
    config, last = tmp_path / "config.yaml", tmp_path / "last.pt"
    with pytest.raises(ValueError):
        with cctr.seg.atomic.discard_on_failure([config], unless=last):
            config.write_text("a: 1")
            raise ValueError("bad input")
    assert not config.exists()
    with pytest.raises(ValueError):
        with cctr.seg.atomic.discard_on_failure([config], unless=last):
            config.write_text("a: 1")
            last.write_bytes(b"ckpt")
            raise ValueError("diverged later")
    assert config.exists()  # a resume needs it
