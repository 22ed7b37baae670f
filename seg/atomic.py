"""Atomic file output: a file appears complete or not at all, so a crash or a bad input never
leaves half a checkpoint, split, report or NIfTI behind.

Temporary files are named ``.tmp-cctr-<pid>-<random><suffix>`` beside their target and are
created with mode ``0o666`` filtered by the umask, so the final file gets the mode any other
new file would (0644 under umask 022). A process killed mid-write (kill -9) leaves its
temporary file behind; :func:`remove_stale_temporaries` (called by every atomic write) removes
those of dead writers that are older than this process.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

TEMP_PREFIX = ".tmp-cctr-"
# when this module was imported: a stand-in for "when this process started" (imported early)
_STARTED = time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _writer_pid(name: str) -> int | None:
    """The pid encoded in a temporary file's name, ``None`` when it is not one of ours."""
    if not name.startswith(TEMP_PREFIX):
        return None
    head = name[len(TEMP_PREFIX):].partition("-")[0]
    return int(head) if head.isdigit() else None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove this package's temporary files in ``folder`` left by writers that died: the
    writer's pid is gone (or is us, reused) and the file is older than this process, so a
    write in progress in another live process is never touched. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        pid = _writer_pid(path.name)
        if pid is None:
            continue
        try:
            old = path.stat().st_mtime < _STARTED
        except OSError:  # removed meanwhile
            continue
        if old and (pid == os.getpid() or not _pid_alive(pid)):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def _create_temporary(folder: Path, suffix: str) -> Path:
    """A new empty file beside the target; ``O_EXCL`` so two writers never share one, mode
    0o666 so the umask alone decides the final permissions (mkstemp would force 0600)."""
    while True:
        tmp = folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary file name beside ``path`` (same extension, so writers that pick a
    format by name still do); when the block ends without error it is renamed onto ``path``,
    otherwise removed. A fault of the file system (read-only, disk full, a file where the
    folder should be) is raised as an ``OSError`` naming ``path``, not the temporary file,
    even where the writer wrapped it in another error (torch does)."""
    path = Path(path)
    with naming_target(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
        tmp = _create_temporary(path.parent, suffix)
        try:
            yield str(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def naming_target(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block, or one a writer wrapped (``raise ... from`` or
    one torch.save hides in a RuntimeError), as the same error naming ``path``."""
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


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def discard_on_failure(paths: Sequence[Path], unless: Path) -> Iterator[None]:
    """Remove ``paths`` this block created when it fails while ``unless`` does not exist: a
    run that dies before its first checkpoint leaves no ``config.yaml`` behind, one that dies
    later keeps what a resume needs."""
    existed = {Path(p): Path(p).exists() for p in paths}
    try:
        yield
    except BaseException:
        if not Path(unless).exists():
            for p, was_there in existed.items():
                if not was_there and p.is_file():
                    p.unlink()
        raise


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
