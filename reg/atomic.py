"""Atomic file output for ``reg`` (``seg.atomic`` has the same; the packages stay independent):
a file appears complete or not at all.

Temporary files are ``.tmp-cctr-<pid>-<random><suffix>`` beside the target, created with mode
0o666 filtered by the umask (so the final file has the mode any new file would, not mkstemp's
0600); those left by a killed writer are removed by the next atomic write in that folder.
"""
from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".tmp-cctr-"
_STARTED = time.time()  # module import time: a stand-in for this process's start


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove our temporary files in ``folder`` whose writer is dead (or was an earlier process
    with our pid) and that are older than this process; live writers' files are kept."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        head = path.name[len(TEMP_PREFIX):].partition("-")[0] if path.name.startswith(TEMP_PREFIX) else ""
        if not head.isdigit():
            continue
        pid = int(head)
        try:
            if path.stat().st_mtime < _STARTED and (pid == os.getpid() or not _pid_alive(pid)):
                path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile
            pass
    return removed


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary name beside ``path``, renamed onto it when the block succeeds, removed
    otherwise: a crash never leaves half a file. A fault of the file system (read-only, disk
    full, a file where the folder should be) is raised as an ``OSError`` naming ``path``,
    also where the writer wrapped it in another error (torch does)."""
    path = Path(path)
    with _naming_target(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        while True:
            tmp = path.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
                break
            except FileExistsError:
                continue
        try:
            yield str(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def _naming_target(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block, or one a writer wrapped, as the same error naming ``path``."""
    try:
        yield
    except OSError as exc:
        if not exc.errno:
            raise
        # a folder on the way keeps its own name; a temporary file is named by its target
        named = exc.filename if exc.filename and not Path(exc.filename).name.startswith(TEMP_PREFIX) else path
        raise OSError(exc.errno, exc.strerror, str(named)) from exc
    except RuntimeError as exc:   # torch.save reports a failed write as RuntimeError, the OSError in its context
        cause = exc.__cause__ or exc.__context__
        if not (isinstance(cause, OSError) and cause.errno):
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from exc
