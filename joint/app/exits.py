"""Exit statuses of the ``cctr`` command line and which failure gets which: the one table that
``cli.main`` applies and ``docs/GUARANTEES.md`` documents.

Every failure is one line on stderr (``cctr: error: ...``) and one of these statuses; the
numbers above 2 are the BSD ``sysexits.h`` ones, so scripts and schedulers can tell a bad
input (fix the command) from a full disk (fix the machine) without reading the message.
"""
from __future__ import annotations

import errno
from typing import Optional

from cctr.seg.feasibility import ImpossibleConfigError

OK = 0
BAD_INPUT = 2            # a bad file, dataset, option or config value (argparse's usage errors are 2 too)
MISSING_EXTRA = 69       # EX_UNAVAILABLE: an optional extra (antspyx for ants-syn) is not installed
CANNOT_WRITE = 73        # EX_CANTCREAT: read-only, permission denied, a file where a folder goes or the reverse
IO_ERROR = 74            # EX_IOERR: disk full, quota exceeded, any other I/O error of the system
IMPOSSIBLE_CONFIG = 78   # EX_CONFIG: values valid one by one that cannot run (a batch that does not fit memory)
INTERRUPTED = 130        # SIGINT: 128 + 2, what a shell reports for Ctrl-C

# errno values meaning "this output cannot be created here", whatever the operation was
_CANNOT_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _os_status(exc: OSError) -> int:
    if isinstance(exc, FileNotFoundError):
        return BAD_INPUT          # a path the command line named does not exist
    if exc.errno in _CANNOT_WRITE_ERRNOS or isinstance(exc, (PermissionError, NotADirectoryError,
                                                             IsADirectoryError, FileExistsError)):
        return CANNOT_WRITE
    return IO_ERROR               # disk full, quota, and every other fault of the system


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (``raise ... from``), outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__
    return out


def exit_status(exc: BaseException) -> Optional[int]:
    """The status for a failure; ``None`` for one that is a bug (its traceback is shown).

    The outermost exception decides, except that a checked refusal (``ValueError``, among them
    ``CaseError``) raised from an :class:`ImpossibleConfigError` keeps that status: commands
    re-raise the trainer's refusals as ``CaseError``. A reader's ``CaseError`` raised from an
    ``OSError`` (a corrupt gzip stream is one) stays bad input."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, ImportError):
        return MISSING_EXTRA
    if isinstance(exc, OSError):
        return _os_status(exc)
    if isinstance(exc, ValueError):
        return IMPOSSIBLE_CONFIG if any(isinstance(c, ImpossibleConfigError) for c in _causes(exc)) else BAD_INPUT
    return None


# what an OS fault means for the user, by errno (the system's own wording otherwise)
_MEANING = {
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.ENOTDIR: "part of this path is a file where a folder is needed",
    errno.EISDIR: "is a folder where a file is needed",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}
_HINT = {CANNOT_WRITE: "move it away or choose another place you can write to",
         IO_ERROR: "free some space or choose another disk"}


def describe(exc: BaseException) -> str:
    """The one line for ``exc``. An OS fault raised as such (``str(OSError)`` reads ``[Errno 28]
    No space left on device: '...'``) becomes ``PATH: what it means; what to do``; any other
    failure is its own message, on one line."""
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, FileNotFoundError):
        status = _os_status(exc)
        meaning = _MEANING.get(exc.errno, (exc.strerror or type(exc).__name__).lower())
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{meaning}; {_HINT[status]}" if status in _HINT else f"{where}{meaning}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.splitlines())
