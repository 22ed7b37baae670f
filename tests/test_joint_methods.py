"""The registration-aware methods: their extras, a short real training run of 'cctr', and the
registration-only atlas baseline."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import cctr.joint.methods
from fakes import ShiftBackend
from cctr.joint.config import JointConfig, as_joint_config, build_config, with_backend
from cctr.joint.gate import GateConfig, RegistrationGate
from cctr.joint.methods import (METHODS, TRAINER_METHODS, pair_dice, registration_only, registration_val_dice,
                                run_backend, train_joint, trainer_methods)
from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.reps import RegistrationPositives
from cctr.joint.rsl import RegistrationSupervision
from cctr.joint.synth import SynthConfig, WarpedAtlasSamples
from cctr.reg.backends import load_backend
from cctr.reg.placement import FrontEnd
from cctr.seg.data.case import Case, CaseError, CaseRef, spacing_affine
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.hooks import TrainerHook
from cctr.seg.students import StudentConfig
from cctr.seg.train import train
from cctr.seg.train_data import load_train_data

CLASSES = ("background", "RV", "MYO", "LV")
SHAPE = (3, 32, 32)
SHIFT = (0, 2, -3)


def anatomy() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    lab = np.zeros(SHAPE, np.uint8)
    r = ((y - 16) / (9 - z)) ** 2 + ((x - 18) / 8.0) ** 2
    lab[r < 1.0] = 2
    lab[r < 0.45] = 3
    lab[(((y - 15) / 6.0) ** 2 + ((x - 6) / 3.0) ** 2 < 1.0) & (lab == 0)] = 1
    return (lab * 100.0 + 20.0).astype(np.float32), lab


def shifted(volume: np.ndarray) -> np.ndarray:
    out = np.zeros_like(volume)
    src = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(SHIFT, volume.shape))
    dst = tuple(slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(SHIFT, volume.shape))
    out[dst] = volume[src]
    return out


def case(pid: str, image: np.ndarray, label: np.ndarray) -> Case:
    return Case(case_id=f"{pid}_ED", patient_id=pid, image=image, label=label, spacing=(8.0, 1.5, 1.5),
                affine=spacing_affine((8.0, 1.5, 1.5)), sources=(), class_names=CLASSES)


@pytest.fixture
def dataset(tmp_path):
    image, label = anatomy()
    cases = [case("p1", image, label)]
    cases += [case(p, shifted(image) + k, shifted(label)) for k, p in enumerate(("p2", "p3", "p4", "p5", "p6"))]
    refs = tuple(CaseRef(c.case_id, c.patient_id, True, loader=(lambda c=c: c)) for c in cases)
    ds = Dataset("nnunet", tmp_path / "data", refs, CLASSES)
    split = Split(train=("p1", "p2", "p3"), val=("p4",), test=("p5", "p6"), labeled_sets={"1": ("p1",)})
    return ds, split


def small_cfg(tmp_path, **changes) -> JointConfig:
    tiny = StudentConfig(kind="unet", widths=(4, 8))
    base = JointConfig(method="cctr", image_size=(32, 32), labeled_batch=2, unlabeled_batch=2, student_a=tiny,
                       student_b=tiny, embedding_dim=8, iterations=3, val_every=1000, out_dir=str(tmp_path / "run"))
    return replace(with_backend(base, "identity", str(tmp_path / "fields")), **changes)


def test_a_seg_preset_becomes_a_joint_config_that_overrides_keep():
    from cctr.seg.config import apply_overrides, preset

    cfg = with_backend(as_joint_config(preset("paper")), "sitk-demons")
    assert isinstance(cfg, JointConfig) and cfg.iterations == preset("paper").iterations
    cfg = apply_overrides(cfg, ["oracle.policy=fused", "iterations=7", "rsl.weight=0.3", "bank.downsample=1"])
    assert isinstance(cfg, JointConfig)
    assert (cfg.oracle.policy, cfg.iterations, cfg.oracle.backend) == ("fused", 7, "sitk-demons")
    assert (cfg.rsl.weight, cfg.bank.downsample) == (0.3, 1)
    with pytest.raises(ValueError, match="oracle.policy"):
        apply_overrides(cfg, ["oracle.policy=nearest"])


def test_one_builder_orders_preset_overrides_and_flags(tmp_path):
    cfg = build_config("paper", ["oracle.policy=fused", "lr=0.5"], method="cctr", out_dir=tmp_path / "run",
                       reg_backend="identity", field_cache=str(tmp_path / "cache"))
    assert (cfg.image_size, cfg.lr, cfg.method, cfg.out_dir) == ((224, 224), 0.5, "cctr", str(tmp_path / "run"))
    assert (cfg.oracle.backend, cfg.oracle.policy, cfg.oracle.cache) == ("identity", "fused", str(tmp_path / "cache"))
    # an explicit flag wins over an override of the same option
    assert build_config(None, ["oracle.backend=sitk-demons"], reg_backend="identity").oracle.backend == "identity"
    assert build_config(None, ["oracle.policy=similar"]).oracle.policy == "similar"   # the policy's one way in
    assert build_config().oracle.cache == "runs/reg-cache"
    # the dataset's planned student settings apply without a config, not over one
    planned = {"image_size": (96, 96), "normalization": "clip-zscore", "intensity_window": (-100.0, 200.0)}
    assert build_config(None, planned=planned).image_size == (96, 96)
    assert build_config("paper", planned=planned).image_size == (224, 224)


def test_every_method_of_the_table_is_known():
    assert METHODS == ("supervised", "ct", "cct", "cctr-rsl", "cctr", "cctr+", "cctr-coupled", "registration-only")
    assert TRAINER_METHODS["cctr"].contrastive and TRAINER_METHODS["cctr-rsl"].cross_teaching
    assert tuple(trainer_methods(FrontEnd())) == tuple(TRAINER_METHODS)


def test_cctr_is_the_papers_rsl_and_reps_and_cctr_plus_adds_the_synthesised_samples_and_the_gate(dataset, tmp_path):
    ds, split = dataset
    cfg = small_cfg(tmp_path)
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    hooks = TRAINER_METHODS["cctr"].build_hooks(cfg, data, tmp_path / "run")
    assert [type(h) for h in hooks] == [RegistrationSupervision, RegistrationPositives]
    assert hooks[0].gate is None
    info = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert info["pairs"] == 2 and info["memory_bank_bytes"] == hooks[1].nbytes > 0 and info["gate"]["mode"] == "none"
    rsl_only = TRAINER_METHODS["cctr-rsl"].build_hooks(cfg, data, tmp_path / "run")
    assert [type(h) for h in rsl_only] == [RegistrationSupervision]
    plus = TRAINER_METHODS["cctr+"].build_hooks(replace(cfg, method="cctr+"), data, tmp_path / "run")
    assert [type(h) for h in plus] == [RegistrationSupervision, RegistrationPositives, WarpedAtlasSamples,
                                       RegistrationGate]
    assert plus[0].gate is plus[3]
    with pytest.raises(ValueError, match="registration backend"):
        TRAINER_METHODS["cctr"].build_hooks(with_backend(cfg, ""), data, tmp_path / "run")


def test_the_run_records_the_front_end_its_classical_backend_registers_on(dataset, tmp_path):
    from cctr.reg.grid import CanonicalGrid
    from cctr.reg.prealign import PrealignConfig
    from cctr.seg.config import to_dict

    ds, split = dataset
    front = FrontEnd(CanonicalGrid(shape=(16, 32, 32), spacing=(5.0, 5.0, 5.0)), PrealignConfig(method="none"))
    cfg = with_backend(small_cfg(tmp_path, gate=GateConfig(mode="none")), "sitk-demons?iterations=5", "")
    cfg = replace(cfg, oracle=replace(cfg.oracle, workers=1))
    (tmp_path / "run").mkdir()
    hooks = trainer_methods(front)["cctr-rsl"].build_hooks(cfg, load_train_data(ds, split, "1"), tmp_path / "run")
    assert hooks[0].guidance.oracle.backend.params["grid"]["shape"] == (16, 32, 32)
    info = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert info["frontend"] == json.loads(json.dumps(to_dict(front)))
    assert info["reg_backend"] == "sitk-demons?iterations=5" and info["pairs"] == 2


def test_cctr_trains_and_checkpoints_its_memory_bank(dataset, tmp_path):
    ds, split = dataset
    result = train_joint(small_cfg(tmp_path), ds, split, progress=False)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    bank = state["hooks"]["reps"]["a"]
    assert bank["filled"].any() and bank["embedding"].dtype == torch.float16
    assert list((tmp_path / "fields").rglob("*.npz"))  # Fields went to the disk cache
    with pytest.raises(ValueError, match="trains no network"):
        train_joint(small_cfg(tmp_path, method="registration-only"), ds, split)


class ContrastProbe(TrainerHook):
    """Records the weighted pixel contrastive loss of every step."""

    name = "probe"

    def __init__(self) -> None:
        self.cl: list[float] = []

    def inspect_losses(self, step, batch, outputs, losses):
        self.cl.append(float(losses["joint/cl"].detach()))


def test_a_short_cctr_run_finds_registration_positives_that_change_the_loss(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds, split = dataset
    cfg = small_cfg(tmp_path, iterations=4, cl_weight=1.0, diag_every=1,
                    contrast=replace(JointConfig().contrast, confidence=0.0))
    probes = {}
    for method in ("cctr-rsl", "cctr"):
        probes[method] = ContrastProbe()
        train(replace(cfg, method=method, out_dir=str(tmp_path / method)), ds, split, hooks=(probes[method],),
              methods=TRAINER_METHODS, progress=False)
    rsl, full = probes["cctr-rsl"].cl, probes["cctr"].cl
    assert rsl[0] == full[0]  # step 0: the bank is still empty, so cctr is cctr-rsl exactly
    assert all(a != b for a, b in zip(rsl[1:], full[1:]))  # then the registration positives change the loss
    events = EventAccumulator(str(tmp_path / "cctr" / "tb"))
    events.Reload()
    valid = {e.step: e.value for e in events.Scalars("reps/valid_fraction")}
    assert valid[1] == 0.0 and min(valid[s] for s in (2, 3, 4)) > 0.5
    assert 0.0 < events.Scalars("rsl/target_dice_hidden")[-1].value <= 1.0  # the hidden labels reached RSL's metric
    assert events.Scalars("diag/pool_acc_a") and events.Scalars("diag/grad_joint_cl_a_emb")


def test_registration_only_propagates_and_scores(dataset, tmp_path, monkeypatch):
    ds, split = dataset
    plain = registration_only(small_cfg(tmp_path, method="registration-only", out_dir=str(tmp_path / "plain")),
                              ds, split, progress=False)
    # the run's backend is the one its spec names; here, one that knows the true shift
    monkeypatch.setattr(cctr.joint.methods, "run_backend", lambda cfg, frontend=None: ShiftBackend(SHIFT))
    good = registration_only(small_cfg(tmp_path, method="registration-only", out_dir=str(tmp_path / "good")),
                             ds, split, progress=False)
    assert sorted(good.predictions) == ["p5_ED", "p6_ED"]
    assert all(p.is_file() for p in good.predictions.values())
    assert (tmp_path / "good" / "scores.csv").is_file() and (tmp_path / "good" / "summary.md").is_file()
    good_dice = np.mean([s.dice for sc in good.scores.values() for s in sc.values()])
    plain_dice = np.mean([s.dice for sc in plain.scores.values() for s in sc.values()])
    assert good_dice > 0.99 and plain_dice < good_dice - 0.05


def test_pair_dice_measures_the_guidance(dataset):
    ds, split = dataset
    atlas = ds.ref("p1_ED").load()
    targets = [ds.ref(f"{p}_ED").load() for p in ("p2", "p3")]
    refs = {t.case_id: t.label for t in targets}
    oracle = RegistrationOracle([atlas], [t.with_label(None) for t in targets], ShiftBackend(SHIFT), OracleConfig())
    dice = pair_dice(oracle, refs)
    assert set(dice) == {("p2_ED", "p1_ED"), ("p3_ED", "p1_ED")} and min(dice.values()) > 0.99


def test_registration_only_refuses_an_empty_subset(dataset, tmp_path):
    ds, split = dataset
    no_test = Split(train=split.train, val=split.val, test=(), labeled_sets=split.labeled_sets)
    with pytest.raises(CaseError, match="no test patients"):
        registration_only(small_cfg(tmp_path, method="registration-only"), ds, no_test, progress=False)


def test_the_plan_reaches_the_classical_backends_of_the_run(dataset, tmp_path):
    from cctr.reg.grid import CanonicalGrid
    from cctr.reg.prealign import PrealignConfig

    ds, _ = dataset
    grid, prealign = CanonicalGrid(shape=(16, 32, 32), spacing=(5.0, 5.0, 5.0)), PrealignConfig(method="none")
    cfg = with_backend(JointConfig(), "sitk-demons")
    backend = run_backend(cfg, FrontEnd(grid, prealign))
    assert backend.params["grid"]["shape"] == (16, 32, 32) and backend.params["prealign"]["method"] == "none"
    oracle = RegistrationOracle([ds.ref("p1_ED").load()], [ds.ref("p2_ED").load().with_label(None)], backend, cfg.oracle)
    assert oracle.backend is backend
    default = run_backend(cfg)
    assert default.params["grid"]["shape"] == CanonicalGrid().shape
    assert run_backend(with_backend(cfg, "sitk-demons?prealign=moments"), FrontEnd(grid, prealign)
                       ).params["prealign"]["method"] == "moments"   # the spec's own prealign wins
    with pytest.raises(ValueError, match="registration backend"):
        run_backend(with_backend(cfg, ""))
    # the grid and pre-alignment are the plan's, no longer options of the run
    from cctr.seg.config import apply_overrides
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(cfg, ["oracle.grid.spacing=[4.0,5.0,5.0]"])


def test_the_gate_scores_the_registration_on_validation_and_logs_its_decisions(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds, split = dataset
    data = load_train_data(ds, split, "1")
    cfg = small_cfg(tmp_path)
    # the validation volume is the atlas shifted by SHIFT: exact for the shift, off for identity
    assert registration_val_dice(cfg, data, ShiftBackend(SHIFT)) > 0.99
    identity = registration_val_dice(cfg, data, load_backend("identity"))
    assert identity < 0.95

    gated = small_cfg(tmp_path, method="cctr+", iterations=4, val_every=2)
    assert gated.gate == GateConfig(mode="validation")   # the default
    train_joint(gated, ds, split, progress=False)
    info = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert info["gate"] == {"mode": "validation", "registration_val_dice": pytest.approx(identity)}
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_gate/open_a")] == [2, 4]
    assert events.Scalars("val_gate/registration_dice")[0].value == pytest.approx(identity)
    student = {e.step: e.value for e in events.Scalars("val_a/dice")}
    opened = {e.step: e.value for e in events.Scalars("val_gate/open_a")}
    assert all(opened[s] == float(student[s] < identity) for s in (2, 4))


def test_the_gate_is_off_without_validation_volumes_or_when_asked(dataset, tmp_path, capsys):
    ds, split = dataset
    no_val = replace(split, val=(), train=(*split.train, *split.val))
    train_joint(small_cfg(tmp_path, method="cctr+", iterations=2), ds, no_val, progress=False)
    info = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert info["gate"] == {"mode": "none", "why": "no validation volumes"}
    assert "no validation volumes" in capsys.readouterr().err
    off = small_cfg(tmp_path, method="cctr+", iterations=2, gate=GateConfig(mode="none"), out_dir=str(tmp_path / "off"))
    hooks = TRAINER_METHODS["cctr+"].build_hooks(off, load_train_data(ds, split, "1"), tmp_path / "off")
    assert [h.name for h in hooks] == ["rsl", "reps", "synth"]
    on = TRAINER_METHODS["cctr+"].build_hooks(small_cfg(tmp_path, method="cctr+", iterations=2),
                                              load_train_data(ds, split, "1"), tmp_path / "off")
    assert [h.name for h in on] == ["rsl", "reps", "synth", "gate"] and on[0].gate is on[3]
    assert getattr(on[1], "gate", None) is None   # the gate gates RSL only


def test_cctr_plus_trains_on_synthesised_samples_unless_their_weight_is_zero(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds, split = dataset
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    off = small_cfg(tmp_path, method="cctr+", synth=SynthConfig(weight=0.0))
    assert "synth" not in [h.name for h in TRAINER_METHODS["cctr+"].build_hooks(off, data, tmp_path / "run")]
    assert "synth" not in [h.name for h in TRAINER_METHODS["cctr"].build_hooks(small_cfg(tmp_path), data,
                                                                               tmp_path / "run")]
    cfg = small_cfg(tmp_path, method="cctr+", synth=SynthConfig(samples=1), out_dir=str(tmp_path / "synth"),
                    diag_every=0, iterations=2)
    train_joint(cfg, ds, split, progress=False)
    events = EventAccumulator(str(tmp_path / "synth" / "tb"))
    events.Reload()
    assert len(events.Scalars("loss/a/synth")) == 2 and events.Scalars("loss/a/synth")[-1].value > 0
    assert 0.5 < events.Scalars("synth/inside")[-1].value <= 1.0
