"""The segmentation trainer's configuration: one dataclass, its YAML form, the named presets
(``'cpu-small'``, the default, and ``'paper'``) and ``key=value`` overrides.

Every option is a field here, so every option can be set from a YAML file or the command line
(``--set student_b.feature_size=24``). Nested dataclasses are addressed with dots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union, get_type_hints

import yaml

from cctr.seg.atomic import write_text_atomic
from cctr.seg.losses import ContrastConfig
from cctr.seg.options import option
from cctr.seg.slices import AugmentConfig
from cctr.seg.students import StudentConfig


@dataclass(frozen=True)
class TrainConfig:
    method: str = option("cct", "training method: supervised, ct, cct, or a registration method (cctr ...)")
    labeled: str = option("1", "labeled set of the split (patient ids listed there), or 'all'")
    out_dir: str = option("runs/seg", "run folder: checkpoints, config.yaml, TensorBoard logs")
    seed: int = option(0, "seed of initialisation, sampling and every random draw of the run")
    # data
    image_size: tuple[int, int] = option((64, 64), "students' input (h, w) in pixels; planned from the data")
    labeled_batch: int = option(4, "labeled samples per step (global batch under torchrun)")
    unlabeled_batch: int = option(4, "unlabeled samples per step (global batch under torchrun)")
    normalization: str = option("zscore", "'zscore', 'clip-zscore' (CT: clipped to intensity_window first) or 'none'")
    intensity_window: Optional[tuple[float, float]] = option(None, "(low, high) raw window of 'clip-zscore'; planned")
    augment: AugmentConfig = AugmentConfig()
    # students: A is the one 'supervised' trains and the one that predicts
    student_a: StudentConfig = StudentConfig(kind="unet", widths=(16, 32, 64, 128, 256))
    student_b: StudentConfig = StudentConfig(kind="swin", feature_size=12)
    embedding_dim: int = option(128, "size of both students' per-pixel projector embedding")
    # optimisation: poly learning rate (power 0.9) and weight decay 1e-4, as in SSL4MIS
    iterations: int = option(600, "training steps")
    optimizer: str = option("adamw", "'sgd' (momentum 0.9) or 'adamw'")
    lr: float = option(2e-3, "base learning rate (poly schedule)")
    # losses (METHOD.md parts 2-4, 8)
    cps_weight: float = option(0.1, "weight of cross teaching at full strength")
    cps_loss: str = option("dice", "cross-teaching loss on the other student's hard label: 'dice', 'ce' or 'dice+ce'")
    rampup_fraction: float = option(0.4, "sigmoid ramp-up of the unsupervised weights over this share of the steps")
    cl_weight: float = option(0.1, "weight of the pixel contrastive loss at full strength")
    # pseudo_source 'agree' and confidence 0.9: chosen on the validation split (docs/RESULTS.md, option table)
    contrast: ContrastConfig = ContrastConfig(anchors_per_class=200, negatives_per_class=100, pseudo_source="agree",
                                              confidence=0.9)
    val_every: int = option(100, "steps between validations (student A's Dice picks best.pt) and last.pt writes")
    device: str = option("cpu", "torch device of the students and the registration net ('cuda' on a GPU)")
    diag_every: int = option(10, "steps between diag/ scalars (seg/diagnostics.py); 0: off")
    skip_nonfinite: int = option(0, "steps with a NaN/inf loss or gradient that may be skipped (0: stop at the first)")

    def __post_init__(self) -> None:
        # refused when the config is built, not after the first training step
        positive = {"iterations": self.iterations, "val_every": self.val_every, "labeled_batch": self.labeled_batch,
                    "embedding_dim": self.embedding_dim}
        bad = [f"{k}={v}" for k, v in positive.items() if v < 1]
        if self.unlabeled_batch < 0 or self.skip_nonfinite < 0:
            bad += [f"{k}={getattr(self, k)}" for k in ("unlabeled_batch", "skip_nonfinite") if getattr(self, k) < 0]
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad.append(f"lr={self.lr}")
        if bad:
            raise ValueError(f"options out of range: {', '.join(bad)} (iterations, val_every, labeled_batch, "
                             "embedding_dim >= 1; unlabeled_batch, skip_nonfinite >= 0; lr > 0)")


PRESETS: Mapping[str, TrainConfig] = {
    "cpu-small": TrainConfig(),
    # the paper's scale (SSL4MIS ACDC protocol): 224 input, 8 + 8 batch, 30k iterations, SGD 0.01
    "paper": TrainConfig(
        image_size=(224, 224),
        labeled_batch=8,
        unlabeled_batch=8,
        augment=AugmentConfig(rotation_deg=20.0, flip=True),
        student_a=StudentConfig(kind="unet", widths=(16, 32, 64, 128, 256), dropout=0.1),
        student_b=StudentConfig(kind="swin", feature_size=48, window_size=7),
        iterations=30000,
        optimizer="sgd",
        lr=0.01,
        contrast=ContrastConfig(anchors_per_class=1000, negatives_per_class=500),
        val_every=200,
    ),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown configuration {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def to_dict(cfg: Any) -> Any:
    """``cfg`` (a dataclass, or mappings and sequences of them) as plain YAML- and JSON-able
    data: dataclasses and mappings become dicts, tuples become lists."""
    def plain(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def _coerce(kind: Any, value: Any, where: str) -> Any:
    """``value`` (from YAML) as the field type ``kind``; ``where`` names the source and option."""
    if is_dataclass(kind):
        raise ValueError(f"{where}: expected a mapping of options, got {value!r}")
    origin = getattr(kind, "__origin__", None)
    if origin is Union:
        # Optional[X]: null stays None, anything else must be an X
        others = [t for t in kind.__args__ if t is not type(None)]
        if value is None and len(others) < len(kind.__args__):
            return None
        if len(others) == 1:
            return _coerce(others[0], value, where)
        raise ValueError(f"{where}: unsupported option type {kind}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = kind.__args__
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ValueError(f"{where}: expected {len(items)} values, got {value!r}")
        return tuple(_coerce(t, v, where) for t, v in zip(items, value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is str:
        # YAML reads a labeled-set name like 1 as a number; a name is what was meant
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if kind in (int, float):
        try:
            # YAML 1.1 reads 1e-3 (no dot) as a string
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
        if kind is int and float(number) != int(number):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return kind(number)
    raise ValueError(f"{where}: unsupported option type {kind}")


def _optional_of(kind: Any) -> Any:
    """``X`` for ``Optional[X]``, else None."""
    if getattr(kind, "__origin__", None) is Union:
        others = [t for t in kind.__args__ if t is not type(None)]
        if len(others) == 1 and len(others) < len(kind.__args__):
            return others[0]
    return None


def _from_mapping(cls: type, data: Mapping, source: str, base: Any, path: str = "") -> Any:
    """``base`` (a ``cls``) with ``data`` applied; errors name ``source`` and the dotted option."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(f"{path}{k}" for k in set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(path + k for k in known)}")
    changes = {}
    for key, value in data.items():
        kind = _optional_of(hints[key]) or hints[key]
        if is_dataclass(kind) and isinstance(value, Mapping):
            # an Optional section that is None so far starts from its own defaults
            current = getattr(base, key)
            changes[key] = _from_mapping(kind, value, source, kind() if current is None else current, f"{path}{key}.")
        else:
            changes[key] = _coerce(hints[key], value, f"{source}: option {path}{key}")
    return replace(base, **changes)


def from_dict(data: Mapping, base: TrainConfig = TrainConfig(), where: str = "config") -> TrainConfig:
    """``base`` with the options in ``data`` (possibly nested, possibly partial) applied.

    Works for subclasses of :class:`TrainConfig` too (the joint package adds its options that
    way): the result has ``base``'s class."""
    return _from_mapping(type(base), data, where, base)


def known_options(data: Mapping, cls: type) -> dict:
    """``data`` (a config as :func:`to_dict` wrote it) without the options ``cls`` does not
    have, at every level: a checkpoint of another version or of a subclass still loads."""
    hints = get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        kind = _optional_of(hints[f.name]) or hints[f.name]
        value = data[f.name]
        out[f.name] = known_options(value, kind) if is_dataclass(kind) and isinstance(value, Mapping) else value
    return out


def load_config(path: Path, base: TrainConfig = TrainConfig()) -> TrainConfig:
    """Options from a YAML file applied over ``base``; ValueError naming the file on bad content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping of options at the top level")
    return from_dict(data, base, where=str(path))


def save_config(cfg: TrainConfig, path: Path) -> Path:
    """Write ``cfg`` as YAML, atomically."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    return write_text_atomic(path, text)


def apply_overrides(cfg: TrainConfig, assignments: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` strings (``student_a.widths=[8,16,32]``, ``lr=0.01``); values are YAML."""
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = from_dict(nested, cfg, where="--set")
    return cfg


@dataclass(frozen=True)
class OptionRow:
    """One option leaf of a configuration: dotted name, value, default and description."""

    name: str
    value: Any
    default: Any
    doc: str


def option_rows(cfg: Any, default: Any, prefix: str = "") -> list[OptionRow]:
    """Every leaf of the configuration dataclass ``cfg`` (nested sections walked, dotted names),
    beside its value in ``default`` and the description its field carries (:mod:`seg.options`;
    '' where none)."""
    rows = []
    for f in fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        if is_dataclass(value) and is_dataclass(base):
            rows += option_rows(value, base, f"{prefix}{f.name}.")
        else:
            rows.append(OptionRow(prefix + f.name, to_dict(value), to_dict(base), f.metadata.get("doc", "")))
    return rows


def differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted names of the options where ``a`` and ``b`` differ."""
    def walk(x: Any, y: Any, prefix: str) -> list[str]:
        if is_dataclass(x) and is_dataclass(y):
            return [d for f in fields(x) for d in walk(getattr(x, f.name), getattr(y, f.name), f"{prefix}{f.name}.")]
        return [] if x == y else [prefix.rstrip(".")]
    return walk(a, b, "")

