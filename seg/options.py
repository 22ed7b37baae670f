"""Documented options: a configuration dataclass field that carries its own one-line
description, so ``cctr config show`` and docs/OPTIONS.md print every option with what it does."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, doc: str) -> Any:
    """A dataclass field with ``default`` and the description ``doc``."""
    return field(default=default, metadata={"doc": doc})
