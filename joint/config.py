"""The joint training configuration: the seg trainer's :class:`~seg.config.TrainConfig` plus the
registration options, each in one nested home (METHOD.md parts 5-7):

- ``oracle.*`` (:class:`joint.oracle.OracleConfig`): backend spec (parsed once into a typed
  :class:`reg.spec.BackendSpec`), atlas policy, caches, workers;
- ``rsl.*`` (:class:`joint.rsl.RSLConfig`): weight and per-pixel confidence of RSL;
- ``synth.*`` (:class:`joint.synth.SynthConfig`): labeled samples made by warping an atlas
  image with its label onto the unlabeled samples' pixels;
- ``gate.*`` (:class:`joint.gate.GateConfig`): when RSL stops for a student that has outgrown
  the registration;
- ``bank.*`` (:class:`joint.memory_bank.BankConfig`): resolution and reach of the REPS bank;
- ``coupled.*`` (:class:`joint.coupled.CoupledConfig`): the registration net's own schedule and
  loss in ``cctr-coupled`` (METHOD.md part 9);
- ``eval_subset``: which split part ``registration-only`` predicts.

So one YAML / ``--set`` mechanism sets them all (``--set oracle.policy=fused``), and
:func:`build_config` is the one way the command line turns a preset or YAML file, overrides
and explicit flags into a run's configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from cctr.joint.coupled import CoupledConfig
from cctr.joint.gate import GateConfig
from cctr.joint.memory_bank import BankConfig
from cctr.joint.oracle import OracleConfig
from cctr.joint.rsl import RSLConfig
from cctr.joint.synth import SynthConfig
from cctr.seg.config import PRESETS, TrainConfig, apply_overrides, load_config, preset
from cctr.seg.options import option

# the Field disk cache of command-line runs: shared by every run started in the same folder
DEFAULT_FIELD_CACHE = "runs/reg-cache"


@dataclass(frozen=True)
class JointConfig(TrainConfig):
    """Training options plus the registration ones; defaults are the project's."""

    oracle: OracleConfig = OracleConfig(cache=DEFAULT_FIELD_CACHE)
    rsl: RSLConfig = RSLConfig()
    synth: SynthConfig = SynthConfig()
    gate: GateConfig = GateConfig()
    bank: BankConfig = BankConfig()
    coupled: CoupledConfig = CoupledConfig()
    eval_subset: str = option("test", "registration-only: which split part to predict, 'val' or 'test'")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_subset not in ("val", "test"):
            raise ValueError(f"eval_subset must be 'val' or 'test', got {self.eval_subset!r}")


def as_joint_config(cfg: TrainConfig) -> JointConfig:
    """``cfg`` (e.g. a seg preset) as a :class:`JointConfig` with the registration options at
    their defaults."""
    return JointConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})


def with_backend(cfg: JointConfig, spec: str, cache: Optional[str] = None) -> JointConfig:
    """``cfg`` with another registration backend (and, if given, Field cache folder)."""
    oracle = replace(cfg.oracle, backend=spec, **({} if cache is None else {"cache": cache}))
    return replace(cfg, oracle=oracle)


def build_config(config: Optional[str] = None, overrides: Sequence[str] = (), *, method: Optional[str] = None,
                 labeled: Optional[str] = None, out_dir: Optional[Path] = None, reg_backend: Optional[str] = None,
                 field_cache: Optional[str] = None, planned: Optional[Mapping[str, Any]] = None) -> JointConfig:
    """A run's configuration: the ``cpu-small`` preset with the dataset's ``planned`` student
    settings (:func:`joint.plan.seg_overrides`), or ``config`` (a preset name, or a YAML file
    applied over ``cpu-small``) as given; then ``field_cache``; then every ``key=value`` of
    ``overrides``; then each explicit flag that is not None. ``config.yaml`` records the result."""
    base = as_joint_config(preset("cpu-small"))
    if config is None:
        cfg = replace(base, **dict(planned or {}))
    elif config in PRESETS:
        cfg = as_joint_config(preset(config))
    else:
        cfg = load_config(Path(config), base)
    if field_cache is not None:
        cfg = replace(cfg, oracle=replace(cfg.oracle, cache=field_cache))
    cfg = apply_overrides(cfg, overrides)
    top = {"method": method, "labeled": labeled, "out_dir": None if out_dir is None else str(out_dir)}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    return cfg if reg_backend is None else with_backend(cfg, reg_backend)
