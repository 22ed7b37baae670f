"""One writer per run folder: :func:`run_lock` holds an exclusive ``flock`` on
``<folder>/.cctr-lock`` for as long as a run writes there, and a second process asking for it
gets :class:`RunLockedError` naming the holder (pid, host, start time, command line).

The kernel drops an ``flock`` when its holder exits, however it exits, so a run killed with
kill -9 leaves no stale lock; the file itself stays (unlinking it would let two processes
lock two different inodes) and is emptied on a clean release.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

LOCK_NAME = ".cctr-lock"


class RunLockedError(ValueError):
    """The folder is locked by another live process (a ValueError: the CLI shows one line)."""


def _holder_line(command: Optional[str]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    cmd = command if command is not None else " ".join(sys.argv)
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}, command: {cmd}\n"


@contextmanager
def run_lock(folder: Path, command: Optional[str] = None) -> Iterator[Path]:
    """Hold the lock of run folder ``folder`` (created if needed) for the block; yields the
    lock file's path. ``command`` describes the holder (default: this process's argv)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that is starting"
            raise RunLockedError(f"{folder}: another run is writing here ({holder}); "
                                 "wait for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_line(command).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
