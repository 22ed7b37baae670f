"""A run folder is identified by its content, not by where it lies: the configuration saved in
its checkpoint less the run's own location. Resuming (``--resume``, a benchmark re-run) after
the folder was moved, copied, or named by another path (relative against absolute) compares
the saved options with the current ones and ignores only what the move changed:

- ``out_dir`` itself;
- any option naming a path inside the run's old location, such as a Field cache or a
  registration checkpoint kept in the same benchmark folder, when it names the same place
  under the new location.

Every other difference still refuses the resume.
"""
from __future__ import annotations

import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

LOCATION = "out_dir"


def _value(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if is_dataclass(a) and is_dataclass(b):
        return [d for f in fields(a) for d in _differences(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")]
    return [] if a == b else [prefix.rstrip(".")]


def moved_roots(saved_dir: str, current_dir: str) -> tuple[str, str]:
    """The folders a move swapped: the saved and current run folders without the trailing
    parts they share (``/a/bench/runs/x`` moved to ``/b/bench/runs/x`` gives ``/a`` and ``/b``),
    so that whatever lay beside the run under the old place maps to the new one."""
    old, new = Path(os.path.abspath(saved_dir)).parts, Path(os.path.abspath(current_dir)).parts
    keep = 0
    while keep < min(len(old), len(new)) - 1 and old[-1 - keep] == new[-1 - keep]:
        keep += 1
    return str(Path(*old[:len(old) - keep])), str(Path(*new[:len(new) - keep]))


def _relocate(value: str, old: str, new: str) -> str:
    """``value`` with every path starting at folder ``old`` moved under ``new`` (an option may
    embed a path: ``learned:/a/reg/best.pt?refine=0``)."""
    return re.sub(rf"(?<![^\s:=,]){re.escape(old.rstrip(os.sep))}(?=[{re.escape(os.sep)}?&,]|$)",
                  lambda _: new.rstrip(os.sep), value)


def _same_place(saved: Any, current: Any, roots: list[tuple[str, str]]) -> bool:
    """Whether two option values differ only by the run's old location against its new one."""
    if not (isinstance(saved, str) and isinstance(current, str)):
        return False
    # a root of '/' would match every path: a move out of the file system's root maps nothing
    return any(old != new and old.strip(os.sep) and _relocate(saved, old, new) == current for old, new in roots)


def config_changes(saved: Any, current: Any) -> list[str]:
    """Dotted names of the options where a run's saved configuration and the current one differ,
    ignoring the run's location (see the module docstring)."""
    changed = [d for d in _differences(saved, current) if d != LOCATION]
    if not changed or not (hasattr(saved, LOCATION) and hasattr(current, LOCATION)):
        return changed
    old_dir, new_dir = str(getattr(saved, LOCATION)), str(getattr(current, LOCATION))
    roots = [(os.path.abspath(old_dir), os.path.abspath(new_dir)), moved_roots(old_dir, new_dir)]
    return [d for d in changed if not _same_place(_value(saved, d), _value(current, d), roots)]
