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
from cctr.reg.losses import LossConfig
from cctr.reg.model import NetConfig
from cctr.reg.options import option
from cctr.reg.prealign import PrealignConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int = option(1250, "pretraining steps")
    batch_size: int = option(2, "pairs per step")
    learning_rate: float = option(2e-3, "Adam learning rate")
    intra_patient_fraction: float = option(0.25, "share of pairs that are two frames (ED/ES) of one patient")
    val_every: int = option(250, "steps between validation, checkpoint and a TensorBoard image panel")
    val_pairs: int = option(12, "validation pairs (labeled validation volumes of two patients)")
    seed: int = option(0, "seed of initialisation and pair draws")
    device: str = option("cpu", "torch device for training ('cuda' on a GPU); resuming is bit-identical on CPU")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ValueError("train: steps, batch_size and val_every must be >= 1")
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
            section = _without_retired(name, dict(d.get(name) or {}), where)
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


# Options of earlier versions that became constants, with the value they were fixed at: a
# checkpoint that used that value still loads (the key is dropped); one that used another refuses.
# None: a logging option that never changed what was trained.
RETIRED: Mapping[str, Mapping[str, Any]] = {
    "prealign": {"bright_percentile": 90.0, "max_angle_deg": 60.0, "angle_step_deg": 5.0, "max_shift_mm": 40.0,
                 "downsample": 2},
    "train": {"log_every": None, "image_every": None},
}


def _without_retired(section: str, values: dict, where: str) -> dict:
    for key, fixed in RETIRED.get(section, {}).items():
        if key in values:
            value = values.pop(key)
            if fixed is not None and value != fixed:
                raise ValueError(f"{where}: {section}.{key}={value!r} is no longer supported (this version always "
                                 f"uses {fixed!r}); retrain with this version")
    return values


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
