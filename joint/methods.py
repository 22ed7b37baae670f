"""The registration-aware methods of METHOD.md's table, on top of the seg trainer.

- ``cctr-rsl``: cct + RSL (:mod:`joint.rsl`);
- ``cctr``: cct + RSL + REPS (:mod:`joint.reps`, :mod:`joint.memory_bank`), the paper's method
  as published;
- ``cctr+``: cctr + what this project adds that earned its place: the registration-synthesised
  labeled samples (:mod:`joint.synth`) and the validation gate of RSL (:mod:`joint.gate`);
- ``cctr-coupled``: cctr+ + the registration net fine-tuned alongside the students, RSL and
  REPS reading its current Fields (:mod:`joint.coupled`, METHOD.md part 9);
- ``registration-only``: no network; each evaluated volume gets the label of the atlas(es)
  warped onto it by registration alone (the atlas baseline).

:func:`trainer_methods` is the seg trainer's method table extended with the training methods,
for a run whose classical backends register on a given front end (the dataset's plan); pass
it as ``methods=`` to :func:`seg.train.train` (:func:`train_joint` does). Their options are
:class:`joint.config.JointConfig`'s. Each method's hooks are built once per run around one
backend, built once from the run's typed spec: the oracle over (unlabeled, labeled) pairs is
warmed at the start so every step finds its Fields in memory (under torchrun each process
computes its share into the disk cache), and the validation gate scores the same backend.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from cctr.joint.config import JointConfig
from cctr.joint.coupled import CoupledRegistration
from cctr.joint.gate import RegistrationGate
from cctr.joint.guidance import Guidance
from cctr.joint.memory_bank import MemoryBank
from cctr.joint.oracle import RegistrationOracle
from cctr.joint.reps import RegistrationPositives
from cctr.joint.rsl import RegistrationSupervision
from cctr.joint.synth import WarpedAtlasSamples
from cctr.reg.backends import Backend, load_backend
from cctr.reg.placement import FrontEnd
from cctr.seg.config import TrainConfig, save_config, to_dict
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.nifti import write_nifti
from cctr.seg.data.split import Split
from cctr.seg.metrics import ClassScore, score_case
from cctr.seg.atomic import write_json
from cctr.seg.distributed import barrier, world_from_environment
from cctr.seg.hooks import TrainerHook
from cctr.seg.slices import normalize_intensity
from cctr.seg.report import Summary, summarize, write_scores_csv, write_summary_markdown
from cctr.seg.train import SEG_METHODS, Method, TrainResult, train
from cctr.seg.train_data import TrainData

REGISTRATION_ONLY = "registration-only"
COUPLED = "cctr-coupled"
PLUS = "cctr+"


def _joint_cfg(cfg: TrainConfig) -> JointConfig:
    """``cfg`` as the JointConfig a registration method needs, with a backend to query."""
    if not isinstance(cfg, JointConfig):
        raise ValueError(f"method {cfg.method!r} needs a JointConfig (the registration options), got {type(cfg).__name__}")
    if cfg.oracle.spec is None:
        raise ValueError(f"method {cfg.method!r} needs a registration backend (oracle.backend / --reg-backend: "
                         "'learned:CKPT', 'sitk-demons', 'ants-syn' or 'identity')")
    return cfg


def run_backend(cfg: JointConfig, frontend: Optional[FrontEnd] = None) -> Backend:
    """The run's registration backend, built once from its typed spec (classical backends on
    ``frontend``, the learned one on the students' device)."""
    return load_backend(_joint_cfg(cfg).oracle.spec, frontend, cfg.device)  # type: ignore[arg-type]


def build_banks(cfg: JointConfig, labeled: Sequence[Case], students: Sequence[str] = ("a", "b")) -> dict[str, MemoryBank]:
    """One REPS memory bank per student over the slices of the labeled cases."""
    slices = {c.case_id: c.shape[0] for c in labeled}
    return {s: MemoryBank(slices, cfg.embedding_dim, cfg.image_size, cfg.bank) for s in students}


def registration_hooks(cfg: TrainConfig, data: TrainData, out_dir: Path, with_reps: bool, backend: Backend,
                       additions: bool = False, live: Optional[CoupledRegistration] = None) -> tuple[TrainerHook, ...]:
    """The RSL hook (and with ``with_reps`` the REPS hook) of one run over ``backend``; with
    ``additions`` (``cctr+``), the synthesised samples' hook when ``synth.weight > 0``, then
    ``live`` (the hook training the served net, if any) and the validation gate when
    ``gate.mode`` turns it on. All registration-guided hooks read one
    :class:`joint.guidance.Guidance` per step.

    Warms the oracle over every (unlabeled, labeled) pair the atlas policy can ask for and
    writes ``registration.json`` in ``out_dir`` (backend, policy, pairs, cache and bank bytes,
    the gate and the registration score it compares with).
    """
    jcfg = _joint_cfg(cfg)
    oracle = RegistrationOracle(data.labeled, data.unlabeled, backend, jcfg.oracle, seed=jcfg.seed)
    world = world_from_environment()
    pairs = oracle.warm(progress=world.is_main, shard=(world.rank, world.size))
    barrier(world)   # every process's share of the pairs is in the disk cache before any step
    gate, gate_record = _gate(jcfg, data, backend, live, world.is_main) if additions else (None, {"mode": "none"})
    guidance = Guidance(oracle)
    hooks: tuple[TrainerHook, ...] = (
        RegistrationSupervision(guidance, jcfg.rsl, rampup_steps=jcfg.rampup_fraction * jcfg.iterations,
                                hidden_labels=data.diagnostic_labels, gate=gate),)
    bank_bytes = 0
    if with_reps:
        reps = RegistrationPositives(guidance, build_banks(jcfg, data.labeled))
        hooks, bank_bytes = (*hooks, reps), reps.nbytes
    if additions and jcfg.synth.weight > 0:
        images = {c.case_id: normalize_intensity(c.image, jcfg.normalization, jcfg.intensity_window) for c in data.labeled}
        hooks = (*hooks, WarpedAtlasSamples(guidance, images, jcfg.synth))
    if live is not None:
        live.bind(oracle)
        hooks = (*hooks, live)
    if gate is not None:
        hooks = (*hooks, gate)   # after ``live``: at a validation it reads the score ``live`` just took
    if world.is_main:
        write_json(Path(out_dir) / "registration.json", {
            "reg_backend": jcfg.oracle.backend,
            "atlas_policy": jcfg.oracle.policy,
            # classical backends (the kinds that do not run in process) register on the run's front end
            "frontend": (None if backend.spec.runs_in_process
                         else to_dict(FrontEnd(backend.grid, backend.prealign))),  # type: ignore[attr-defined]
            "pairs": pairs,
            "field_cache_bytes": oracle.fields.nbytes,
            "memory_bank_bytes": bank_bytes,
            "gate": gate_record,
        })
    return hooks


def _gate(cfg: JointConfig, data: TrainData, backend: Backend, live: Optional[CoupledRegistration],
          report: bool) -> tuple[Optional[RegistrationGate], dict]:
    """The run's gate (None when off) and what ``registration.json`` records of it. A fixed
    registration is scored once, now; a ``live`` one at every validation, by ``live`` itself."""
    record: dict = {"mode": cfg.gate.mode}
    if cfg.gate.mode == "none":
        return None, record
    if not data.val:
        # the default must not fail a split without validation volumes; say so instead
        if report:
            print("cctr: note: gate.mode=validation, but the split has no validation volumes: "
                  "RSL runs ungated", file=sys.stderr)
        return None, {**record, "mode": "none", "why": "no validation volumes"}
    if live is not None:
        return RegistrationGate(live.atlas_val_dice), {**record, "registration_val_dice": "live"}
    score = registration_val_dice(cfg, data, backend)
    return RegistrationGate(lambda: score), {**record, "registration_val_dice": score}


def registration_val_dice(cfg: JointConfig, data: TrainData, backend: Backend) -> float:
    """The registration's score on the validation volumes in the students' validation metric
    (:func:`seg.validation.validate`): each volume gets its policy's atlas labels warped onto
    it, as ``registration-only`` predicts, scored in 3D; mean foreground Dice over classes,
    then volumes. What the gate (:mod:`joint.gate`) compares every student with."""
    if not data.val:
        raise ValueError("the registration's validation score needs validation volumes, and the split has none")
    _, scores = propagate_and_score(cfg, data.labeled, data.val, len(data.class_names), backend, progress=False)
    return summarize(scores, data.class_names).overall["dice"].mean


def _coupled_hooks(cfg: TrainConfig, data: TrainData, out_dir: Path) -> tuple[TrainerHook, ...]:
    """``cctr``'s hooks over a live backend, plus the hook that trains that backend's net
    (:mod:`joint.coupled`); the oracle keeps no disk cache, its Fields change with the net."""
    jcfg = _joint_cfg(cfg)
    coupled = CoupledRegistration.from_spec(jcfg.oracle.spec, jcfg.coupled, data.labeled, data.unlabeled,  # type: ignore[arg-type]
                                            data.val, len(data.class_names), seed=jcfg.seed, device=jcfg.device,
                                            diagnostic_labels=data.diagnostic_labels, iterations=cfg.iterations)
    uncached = replace(jcfg, oracle=replace(jcfg.oracle, cache=""))
    return registration_hooks(uncached, data, out_dir, with_reps=True, backend=coupled.backend, additions=True,
                              live=coupled)


def trainer_methods(frontend: Optional[FrontEnd] = None) -> Mapping[str, Method]:
    """The seg methods plus the registration ones, whose classical backends register on
    ``frontend`` (None: the project defaults; a dataset's plan gives its own, :func:`joint.plan.frontend`)."""
    def guided(with_reps: bool, additions: bool = False) -> Callable[[TrainConfig, TrainData, Path], tuple[TrainerHook, ...]]:
        def build(cfg: TrainConfig, data: TrainData, out_dir: Path) -> tuple[TrainerHook, ...]:
            return registration_hooks(cfg, data, out_dir, with_reps, run_backend(_joint_cfg(cfg), frontend), additions)
        return build

    two = dict(students=("a", "b"), cross_teaching=True, contrastive=True, unlabeled=True)
    return MappingProxyType({
        **SEG_METHODS,
        "cctr-rsl": Method(**two, build_hooks=guided(with_reps=False)),
        "cctr": Method(**two, build_hooks=guided(with_reps=True)),
        PLUS: Method(**two, build_hooks=guided(with_reps=True, additions=True)),
        COUPLED: Method(**two, build_hooks=_coupled_hooks),
    })


TRAINER_METHODS: Mapping[str, Method] = trainer_methods()

# Every method of METHOD.md's table, in its order.
METHODS: tuple[str, ...] = (*TRAINER_METHODS, REGISTRATION_ONLY)
# The methods that query a registration backend.
REGISTRATION_METHODS: tuple[str, ...] = ("cctr-rsl", "cctr", PLUS, COUPLED, REGISTRATION_ONLY)


def train_joint(cfg: TrainConfig, dataset: Dataset, split: Split, *, frontend: Optional[FrontEnd] = None,
                resume: bool = False, progress: bool = True) -> TrainResult:
    """:func:`seg.train.train` with the registration-aware methods available (classical
    backends on ``frontend``, see :func:`trainer_methods`)."""
    if cfg.method == REGISTRATION_ONLY:
        raise ValueError(f"{REGISTRATION_ONLY!r} trains no network; use registration_only()")
    return train(cfg, dataset, split, methods=trainer_methods(frontend), resume=resume, progress=progress)


@dataclass(frozen=True)
class PropagationResult:
    out_dir: Path
    predictions: dict[str, Path]                  # case id -> NIfTI label map
    scores: dict[str, dict[int, ClassScore]]      # case id -> foreground class -> score
    summary: Summary


def propagate_labels(oracle: RegistrationOracle, target_ids: Sequence[str], progress: bool = True) -> dict[str, np.ndarray]:
    """uint8 ``(Z, Y, X)`` label of each target: the policy's atlas(es) warped onto it and voted.

    The 'random' policy draws one atlas per target (step 0, seeded); 'fused' votes over all.
    """
    out = {}
    for target_id in tqdm(target_ids, desc="propagate labels", unit="volume", disable=None if progress else True):
        out[target_id] = oracle.warped_label(target_id, oracle.atlases_for(target_id, step=0))
    return out


def propagate_and_score(cfg: JointConfig, atlases: Sequence[Case], targets: Sequence[Case], num_classes: int,
                        backend: Backend, progress: bool = True
                        ) -> tuple[dict[str, np.ndarray], dict[str, dict[int, ClassScore]]]:
    """The atlas baseline on labeled ``targets``: each target's label by :func:`propagate_labels`
    (the oracle warmed over ``atlases`` first), and its 3D scores per foreground class."""
    oracle = RegistrationOracle(atlases, targets, backend, cfg.oracle, seed=cfg.seed)
    oracle.warm(progress=progress)
    labels = propagate_labels(oracle, [c.case_id for c in targets], progress)
    scores = {c.case_id: score_case(labels[c.case_id], c.label, c.spacing, num_classes) for c in targets}
    return labels, scores


def registration_only(cfg: TrainConfig, dataset: Dataset, split: Split, *, frontend: Optional[FrontEnd] = None,
                      progress: bool = True) -> PropagationResult:
    """The atlas baseline: labels of ``cfg.labeled`` propagated to the ``cfg.eval_subset``
    volumes, written as NIfTI under ``out_dir/predictions`` and scored in 3D
    (``scores.csv``, ``summary.md``), with ``config.yaml`` alongside."""
    jcfg = _joint_cfg(cfg)
    patients = split.val if jcfg.eval_subset == "val" else split.test
    if not patients:
        raise CaseError(f"{dataset.root}: the split has no {jcfg.eval_subset} patients to propagate labels to")
    atlases = tuple(ref.load() for ref in dataset.of_patients(split.labeled(jcfg.labeled)))
    targets = tuple(ref.load() for ref in dataset.of_patients(patients))
    unlabeled = [c.case_id for c in targets if c.label is None]
    if unlabeled:
        raise CaseError(f"{dataset.root}: {jcfg.eval_subset} cases without a reference label: {unlabeled}")
    out_dir = Path(jcfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(jcfg, out_dir / "config.yaml")
    class_names = tuple(dataset.class_names)
    labels, scores = propagate_and_score(jcfg, atlases, targets, len(class_names), run_backend(jcfg, frontend), progress)
    predictions = {case.case_id: write_nifti(out_dir / "predictions" / f"{case.case_id}.nii.gz",
                                             labels[case.case_id], case.affine, case.header) for case in targets}
    summary = summarize(scores, class_names)
    write_scores_csv(out_dir / "scores.csv", scores, class_names)
    write_summary_markdown(out_dir / "summary.md", summary,
                           title=f"registration-only ({jcfg.oracle.backend}, {jcfg.oracle.policy}), {jcfg.eval_subset}")
    return PropagationResult(out_dir, predictions, scores, summary)


def pair_dice(oracle: RegistrationOracle, references: Mapping[str, np.ndarray],
              pairs: Optional[Sequence[tuple[str, str]]] = None) -> dict[tuple[str, str], float]:
    """Mean foreground 3D Dice of each (target, atlas) pair's warped atlas label against the
    target's reference label: how good the registration guidance of a run was (targets without
    a reference are skipped). ``pairs`` defaults to every pair the policy can ask for."""
    out = {}
    for target_id, atlas_id in (oracle.needed_pairs() if pairs is None else pairs):
        if target_id not in references:
            continue
        warped = oracle.warped_label(target_id, (atlas_id,))
        scores = score_case(warped, references[target_id], oracle.case(target_id).spacing, oracle.num_classes)
        out[(target_id, atlas_id)] = float(np.mean([s.dice for s in scores.values()]))
    return out
