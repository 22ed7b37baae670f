"""Run-folder locks (``cctr.seg.runlock``; the application takes it for registration training too): a second process is refused with an
error naming the holder, and a holder killed with SIGKILL leaves no stale lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cctr.seg.runlock

ROOT = Path(__file__).resolve().parents[1]


def _holder(module: str, folder: Path) -> subprocess.Popen:
    """A process that takes the lock, says so, and waits to be killed."""
    code = (f"import sys, time; from {module} import run_lock\n"
            f"with run_lock(sys.argv[1], command='cctr train --out X'):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("lock", [cctr.seg.runlock])
def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path, lock):
    proc = _holder(lock.__name__, tmp_path / "run")
    try:
        with pytest.raises(lock.RunLockedError) as info:
            with lock.run_lock(tmp_path / "run"):
                pass
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "cctr train --out X" in message and str(tmp_path / "run") in message
        assert isinstance(info.value, ValueError)  # the CLI shows one line, exit 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with lock.run_lock(tmp_path / "run", command="mine") as path:
        assert f"pid {os.getpid()}" in path.read_text()
    assert path.read_text() == ""  # released cleanly


def test_the_lock_is_reentrant_only_after_release(tmp_path):
    with cctr.seg.runlock.run_lock(tmp_path):
        with pytest.raises(cctr.seg.runlock.RunLockedError):
            with cctr.seg.runlock.run_lock(tmp_path):
                pass
    with cctr.seg.runlock.run_lock(tmp_path):
        pass
