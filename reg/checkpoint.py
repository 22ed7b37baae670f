"""Checkpoints of the learned registration: one file holding the config, the model and
optimiser states, the step and every RNG state, written atomically.

Everything in it is plain data (dicts, lists, numbers, strings, tensors), so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch

from cctr.reg.atomic import atomic_path
from cctr.reg.config import RegConfig
from cctr.reg.guard import check_state_finite
from cctr.reg.model import RegistrationNet

FORMAT = "cctr-reg-checkpoint/1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with the format tag added) to ``path`` atomically; a payload holding
    NaN or inf (a diverged run) is refused with :class:`reg.guard.NonFiniteError`."""
    check_state_finite(payload, str(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # through a Python file, so a full disk surfaces as OSError (ENOSPC), not a torch RuntimeError
        torch.save({"format": FORMAT, **payload}, f)
    return Path(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; ValueError naming the file when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: registration checkpoint not found")
    wrong = _not_torch_file(path)
    if wrong is not None:
        raise ValueError(f"{path}: {wrong}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cctr registration checkpoint (expected format {FORMAT!r})")
    for key in ("config", "model"):
        if key not in data:
            raise ValueError(f"{path}: checkpoint has no {key!r} entry")
    return data


def _not_torch_file(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a torch checkpoint, judged by its first bytes (torch writes a zip
    archive, older versions a pickle); ``None`` when it may be one. torch's own error for a
    text file reads ``KeyError: 101``."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None   # torch.load reports it
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file, not a checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a checkpoint (neither the zip archive torch writes nor a pickle)"
    first = text.splitlines()[0][:40] if text.strip() else ""
    return f"a text file, not a checkpoint (it begins {first!r})"


def load_model(path: Path) -> tuple[RegistrationNet, RegConfig]:
    """The trained network (eval mode, CPU) and its config, from a checkpoint alone."""
    data = read_checkpoint(path)
    config = RegConfig.from_dict(data["config"], where=f"{path} (stored config)")
    # the random initialisation is overwritten at once; drawing it must not move the caller's
    # global torch RNG (a trainer that loads a net before building its students would otherwise
    # initialise them differently depending on how many nets it loaded)
    with torch.random.fork_rng():
        net = RegistrationNet(config.net)
    try:
        net.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: model weights do not fit the stored config ({exc})") from exc
    net.eval()
    return net, config


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
