"""Configuration of the learned registration: what the network sees (grid, pre-alignment),
the network itself, its losses and its training schedule. One dataclass, saved as YAML next
to the checkpoints and inside every checkpoint, so a checkpoint alone rebuilds the model.

Reading a YAML file or ``--set key=value`` overrides (with values typed by these dataclasses'
fields) is the application's one mechanism for every config, ``seg.config.load_config`` /
``apply_overrides``; this module only round-trips what it wrote itself (:meth:`RegConfig.to_dict`,
:meth:`RegConfig.from_dict`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import yaml

from cctr.reg.grid import CanonicalGrid
from cctr.reg.model import NetConfig
from cctr.reg.prealign import PrealignConfig


@dataclass(frozen=True)
class LossConfig:
    similarity: str = "ncc"  # 'ncc' | 'mse'
    ncc_window: tuple[int, int, int] = (3, 7, 7)  # (z, y, x) canonical voxels
    smoothness_weight: float = 0.3
    dice_weight: float = 0.0  # > 0: also Dice of warped labels on pairs where both are labeled

    def __post_init__(self) -> None:
        if self.similarity not in ("ncc", "mse"):
            raise ValueError(f"unknown similarity {self.similarity!r}; expected 'ncc' or 'mse'")
        if self.smoothness_weight < 0 or self.dice_weight < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1250
    batch_size: int = 2
    learning_rate: float = 2e-3
    intra_patient_fraction: float = 0.25  # share of pairs that are ED/ES of one patient
    val_every: int = 250
    val_pairs: int = 12
    log_every: int = 25
    image_every: int = 500
    seed: int = 0
    device: str = "cpu"  # torch device for training; resuming is bit-identical on CPU

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.val_every < 1 or self.log_every < 1 or self.image_every < 1:
            raise ValueError("train: steps, batch_size, val_every, log_every and image_every must be >= 1")
        if not 0.0 <= self.intra_patient_fraction <= 1.0:
            raise ValueError(f"train: intra_patient_fraction must be in [0, 1], got {self.intra_patient_fraction}")


@dataclass(frozen=True)
class RegConfig:
    grid: CanonicalGrid = field(default_factory=CanonicalGrid)
    prealign: PrealignConfig = field(default_factory=PrealignConfig)
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    @staticmethod
    def from_dict(d: Mapping[str, Any], where: str = "config") -> "RegConfig":
        parts = {f.name: f.type for f in fields(RegConfig)}
        unknown = set(d) - set(parts)
        if unknown:
            raise ValueError(f"{where}: unknown section(s) {sorted(unknown)}; expected {sorted(parts)}")
        kinds = {"grid": CanonicalGrid, "prealign": PrealignConfig, "net": NetConfig, "loss": LossConfig, "train": TrainConfig}
        built = {}
        for name, kind in kinds.items():
            section = dict(d.get(name) or {})
            known = {f.name: f for f in fields(kind)}
            bad = set(section) - set(known)
            if bad:
                raise ValueError(f"{where}: unknown key(s) {sorted(bad)} in section {name!r}; expected {sorted(known)}")
            try:
                built[name] = kind(**{k: _tuples(v) for k, v in section.items()})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: section {name!r}: {exc}") from exc
        return RegConfig(**built)

    def with_overrides(self, **train_overrides: Any) -> "RegConfig":
        """A copy with some ``train`` fields replaced (``None`` values are ignored)."""
        d = self.to_dict()
        d["train"].update({k: v for k, v in train_overrides.items() if v is not None})
        return RegConfig.from_dict(d)


def _tuples(value: Any) -> Any:
    """Lists back to the tuples :meth:`RegConfig.to_dict` turned into lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_config(config: RegConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
