"""cctr-coupled (joint.coupled): the registration net takes its own steps during segmentation
training, the oracle then serves Fields of the new net, the students' agreed labels reach the
registration loss, RUN/reg/*.pt load as learned backends, and resume stays exact."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import cctr.joint.coupled
from cctr.joint.config import JointConfig, with_backend
from cctr.joint.coupled import PAIRS, CoupledConfig, CoupledRegistration, PseudoLabels
from cctr.joint.methods import METHODS, REGISTRATION_METHODS, TRAINER_METHODS, train_joint
from cctr.reg.backends import LEARNED_BATCH, load_backend
from cctr.reg.checkpoint import save_checkpoint
from cctr.reg.config import RegConfig
from cctr.reg.model import RegistrationNet
from cctr.reg.refine import RefineConfig
from cctr.reg.spec import BackendSpec
from cctr.seg.config import apply_overrides
from cctr.seg.data.case import Case, CaseRef, spacing_affine
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.hooks import TrainerHook
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentConfig
from cctr.seg.train import load_train_data, train


CLASSES = ("background", "RV", "MYO", "LV")
SHAPE = (3, 32, 32)
SPACING = (8.0, 1.5, 1.5)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def trusting(monkeypatch):
    """The tiny students of a few steps are never 0.9 sure (``coupled.CONFIDENCE``): trust every
    voxel they agree on, so their labels reach the registration loss at this scale."""
    monkeypatch.setattr(cctr.joint.coupled, "CONFIDENCE", 0.0)


def anatomy(dy: int, dx: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A ring (MYO) around a blob (LV) with an RV beside it, moved by (dy, dx) voxels."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    lab = np.zeros(SHAPE, np.uint8)
    r = ((y - 16 - dy) / (9.0 * scale - z)) ** 2 + ((x - 18 - dx) / (8.0 * scale)) ** 2
    lab[r < 1.0] = 2
    lab[r < 0.45] = 3
    lab[(((y - 15 - dy) / 6.0) ** 2 + ((x - 6 - dx) / 3.0) ** 2 < 1.0) & (lab == 0)] = 1
    image = np.asarray([0.1, 0.9, 0.5, 0.7], np.float32)[lab] * 100.0
    return image, lab


@pytest.fixture
def dataset(tmp_path):
    cases = []
    moves = {"p1": [(0, 0, 1.0), (1, 0, 0.9)], "p2": [(2, -2, 1.05)], "p3": [(-2, 1, 0.95)], "p4": [(1, 2, 1.0)],
             "p5": [(0, -1, 1.1)], "p6": [(-1, 0, 0.9)], "p7": [(1, 1, 1.0)]}
    for pid, frames in moves.items():
        for frame, (dy, dx, scale) in zip(("ED", "ES"), frames):
            image, label = anatomy(dy, dx, scale)
            cases.append(Case(case_id=f"{pid}_{frame}", patient_id=pid, image=image, label=label, spacing=SPACING,
                              affine=spacing_affine(SPACING), sources=(), class_names=CLASSES))
    refs = tuple(CaseRef(c.case_id, c.patient_id, True, loader=(lambda c=c: c)) for c in cases)
    ds = Dataset("nnunet", tmp_path / "data", refs, CLASSES)
    split = Split(train=("p1", "p2", "p3", "p4"), val=("p5", "p6"), test=("p7",), labeled_sets={"1": ("p1",)})
    return ds, split


@pytest.fixture
def reg_ckpt(tmp_path):
    config = RegConfig.from_dict({"grid": {"shape": [16, 32, 32], "spacing": [4.0, 2.4, 2.4]},
                                  "net": {"nb_features": [4, 4, 4, 4]}})
    torch.manual_seed(0)
    net = RegistrationNet(config.net)
    path = tmp_path / "pretrained.pt"
    save_checkpoint(path, {"config": config.to_dict(), "model": net.state_dict()})
    return path


def small_cfg(tmp_path, reg_ckpt, **coupled) -> JointConfig:
    """Six iterations: one of warm-up (a sixth of the run), then a registration step after each."""
    tiny = StudentConfig(kind="unet", widths=(4, 8))
    options = {"every": 1, "refresh_every": 2, "lr": 1e-2, "final_phase": 0.0, "mid_phase": 0.0, **coupled}
    base = JointConfig(method="cctr-coupled", image_size=(32, 32), labeled_batch=2, unlabeled_batch=2, student_a=tiny,
                       student_b=tiny, embedding_dim=8, iterations=6, val_every=3,
                       out_dir=str(tmp_path / "run"), coupled=CoupledConfig(**options))
    return with_backend(base, f"learned:{reg_ckpt}", str(tmp_path / "fields"))


def named(hooks, name: str):
    """The hook of that name among a method's hooks."""
    return next(h for h in hooks if h.name == name)


def labeled_only_batch() -> SliceBatch:
    """A batch with no unlabeled sample: after_step then only runs the schedule."""
    return SliceBatch(image=torch.zeros(1, 1, 32, 32), label=torch.zeros(1, 32, 32, dtype=torch.int64),
                      is_labeled=torch.tensor([True]), case_id=["p1_ED"], slice_index=torch.tensor([0]),
                      to_volume=torch.eye(3)[None])


def test_the_method_is_listed_and_its_options_nest_under_coupled():
    assert "cctr-coupled" in METHODS and "cctr-coupled" in REGISTRATION_METHODS
    assert TRAINER_METHODS["cctr-coupled"].contrastive and TRAINER_METHODS["cctr-coupled"].cross_teaching
    cfg = apply_overrides(JointConfig(), ["coupled.every=3", "coupled.mid_phase=0.5"])
    assert (cfg.coupled.every, cfg.coupled.mid_phase) == (3, 0.5)
    with pytest.raises(ValueError, match="coupled"):
        apply_overrides(JointConfig(), ["coupled.every=0"])
    for bad in ("mid_phase", "final_phase"):
        with pytest.raises(ValueError, match="mid_phase and final_phase >= 0"):
            CoupledConfig(**{bad: -1.0})


@pytest.mark.parametrize("gone", ["warmup_steps=10", "pairs=2", "confidence=0.9", "final_steps=100", "mid_steps=100",
                                  "mid_at=0.5", "refresh_pairs=all", "labeled_fraction=0.25", "atlas_fraction=0.5",
                                  "dice_weight=1.0", "pseudo_weight=1.0", "val_pairs=8"])
def test_coupled_options_that_became_constants_are_refused_as_unknown(gone):
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(JointConfig(), [f"coupled.{gone}"])


def test_the_schedule_scales_with_the_run(reg_ckpt):
    """Warm-up a sixth of the run, the mid-run phase half way, both phases per segmentation step."""
    spec = BackendSpec.parse(f"learned:{reg_ckpt}?refine=0")
    hook = CoupledRegistration.from_spec(spec, CoupledConfig(), [], [], [], 4, iterations=600)
    assert (hook.warmup_steps, hook.mid_step, hook.mid_steps, hook.final_steps) == (100, 300, 798, 1602)
    short = CoupledRegistration.from_spec(spec, CoupledConfig(mid_phase=0.5, final_phase=0.0), [], [], [], 4,
                                          iterations=12)
    assert (short.warmup_steps, short.mid_step, short.mid_steps, short.final_steps) == (2, 6, 6, 0)


def test_pseudo_labels_keep_only_agreed_confident_voxels_of_covered_pixels():
    memory = PseudoLabels({"u": (2, 8, 8)})
    label = torch.zeros(8, 8, dtype=torch.int64)
    label[2:6, 2:6] = 2
    sure = torch.nn.functional.one_hot(label, 3).permute(2, 0, 1).float() * 0.9 + 0.05
    memory.update("u", 1, torch.eye(3), sure, sure, confidence=0.8)
    assert torch.equal(memory.label["u"][1], label.to(torch.uint8)) and bool(memory.mask["u"][1].all())
    assert not memory.mask["u"][0].any()  # another slice is untouched
    # the students now disagree on the left half, seen through a sample shifted by 4 columns:
    # sample column c is volume column c + 4, so only volume columns 4..7 are covered
    other = sure.clone()
    other[:, :, :2] = sure[:, :, :2].flip(0)
    shift = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    memory.update("u", 1, shift, sure, other, confidence=0.8)
    assert bool(memory.mask["u"][1][:, :4].all())        # not covered: the earlier word stays
    assert not memory.mask["u"][1][:, 4:6].any()         # covered, students disagree
    assert bool(memory.mask["u"][1][:, 7].all())
    unsure = torch.full((3, 8, 8), 1.0 / 3)
    memory.update("u", 0, torch.eye(3), unsure, unsure, confidence=0.8)
    assert not memory.mask["u"][0].any()
    assert 0.0 < memory.coverage() < 1.0


def test_the_hook_takes_registration_steps_and_the_oracle_serves_the_new_net(dataset, reg_ckpt, tmp_path):
    ds, split = dataset
    cfg = replace(small_cfg(tmp_path, reg_ckpt, every=2, refresh_every=5), iterations=12)   # 2 steps of warm-up
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    hooks = TRAINER_METHODS["cctr-coupled"].build_hooks(cfg, data, tmp_path / "run")
    assert [h.name for h in hooks] == ["rsl", "reps", "synth", "regnet", "gate"]   # the gate reads what regnet validated
    coupled = named(hooks, "regnet")
    assert isinstance(coupled, CoupledRegistration) and coupled.warmup_steps == 2
    oracle = hooks[0].guidance.oracle
    assert oracle.cfg.cache == "" and oracle.backend is coupled.backend  # a changing net: no disk cache
    before_net = {k: v.clone() for k, v in coupled.net.state_dict().items()}
    before_field = oracle.field("p2_ED", "p1_ED").disp.copy()
    batch = labeled_only_batch()
    steps_taken = []
    for step in range(6):
        coupled.after_step(step, batch, {})
        steps_taken.append(coupled.reg_steps)
        if step == 3:  # a registration step happened, no refresh yet: the old Fields are still served
            assert coupled.reg_steps == 1 and oracle.version == 0
            np.testing.assert_array_equal(oracle.field("p2_ED", "p1_ED").disp, before_field)
    assert steps_taken == [0, 0, 0, 1, 1, 2]  # after 2 warm-up steps, one every 2 steps
    assert oracle.version == 1 and coupled.served_steps == 1  # refreshed once, after step 5
    assert any(not torch.equal(before_net[k], v) for k, v in coupled.net.state_dict().items())
    after_field = oracle.field("p2_ED", "p1_ED").disp
    assert np.abs(after_field - before_field).max() > 1e-4
    assert set(coupled.metrics()) >= {"loss", "similarity", "smoothness", "steps"}
    assert coupled.metrics() == {}  # once per step that had a registration step


def count_calls(coupled: CoupledRegistration) -> list[int]:
    """The number of pairs of every call of the served backend from now on (appended as they come)."""
    calls: list[int] = []
    real = coupled.backend.displacements

    def counted(jobs):
        calls.append(len(jobs))
        return real(jobs)

    object.__setattr__(coupled.backend, "displacements", counted)
    return calls


def test_a_refresh_recomputes_every_pair_at_once(dataset, reg_ckpt, tmp_path):
    ds, split = dataset
    cfg = small_cfg(tmp_path, reg_ckpt, every=1, refresh_every=1)
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    hooks = TRAINER_METHODS["cctr-coupled"].build_hooks(cfg, data, tmp_path / "run")
    coupled, oracle = named(hooks, "regnet"), hooks[0].guidance.oracle
    needed = oracle.needed_pairs()
    assert len(needed) == 6 and all(pair in oracle.fields for pair in needed)   # the first warm
    before = oracle.field(*needed[0]).disp.copy()
    calls = count_calls(coupled)
    coupled.after_step(0, labeled_only_batch(), {})   # the warm-up step: nothing to serve
    assert calls == [] and coupled.reg_steps == 0
    coupled.after_step(1, labeled_only_batch(), {})
    assert coupled.served_steps == 1 and oracle.version == 1
    # every pair the policy can ask for, in the oracle's calls of LEARNED_BATCH pairs
    assert calls == [LEARNED_BATCH, 6 - LEARNED_BATCH] and all(pair in oracle.fields for pair in needed)
    assert np.abs(oracle.field(*needed[0]).disp - before).max() > 1e-4   # the new net's


def test_a_resumed_hook_recomputes_its_fields_in_the_calls_of_a_refresh(dataset, reg_ckpt, tmp_path):
    """Batched Fields can differ in the last bits with the pairs batched together, so a resumed
    run must compute them in the calls the uninterrupted one did: all pairs in the oracle's
    calls, and the first warm's as they are while the served net is still the checkpoint's."""
    ds, split = dataset
    cfg = small_cfg(tmp_path, reg_ckpt, every=1, refresh_every=1)
    data = load_train_data(ds, split, "1")

    def hook_and_oracle(name: str):
        (tmp_path / name).mkdir()
        hooks = TRAINER_METHODS["cctr-coupled"].build_hooks(cfg, data, tmp_path / name)
        return named(hooks, "regnet"), hooks[0].guidance.oracle

    straight, _ = hook_and_oracle("straight")
    fresh = straight.state_dict()                 # served net = the checkpoint's
    for step in (0, 1):                           # warm-up, then a registration step and a refresh
        straight.after_step(step, labeled_only_batch(), {})
    refreshed = straight.state_dict()             # served net trained one step
    assert refreshed["served_steps"] == 1
    resumed, oracle = hook_and_oracle("resumed")
    calls = count_calls(resumed)
    resumed.load_state_dict(fresh)
    assert calls == [] and oracle.version == 0 and len(oracle.fields) == 6   # the first warm's Fields stay
    resumed.load_state_dict(refreshed)
    assert oracle.version == 1
    assert calls == [LEARNED_BATCH, 6 - LEARNED_BATCH]


def test_labeled_pairs_add_a_dice_term_that_moves_the_net(dataset, reg_ckpt, tmp_path, monkeypatch):
    """Pairs of two labeled volumes add the truth Dice term to the image loss; pairs with an
    unlabeled volume the students have not covered yet add none."""
    ds, split = dataset
    data = load_train_data(ds, split, "1")
    spec = BackendSpec.parse(f"learned:{reg_ckpt}")
    losses = {}
    for labeled_fraction in (0.0, 1.0):
        monkeypatch.setattr(cctr.joint.coupled, "LABELED_FRACTION", labeled_fraction)
        hook = CoupledRegistration.from_spec(spec, CoupledConfig(), data.labeled, data.unlabeled, data.val, 4)
        before = {k: v.clone() for k, v in hook.net.state_dict().items()}
        hook._registration_step()
        losses[labeled_fraction] = hook.metrics()
        assert any(not torch.equal(before[k], v) for k, v in hook.net.state_dict().items())
    weight = RegConfig.from_dict({}).loss.smoothness_weight
    for logged in losses.values():
        image = logged["similarity"] + weight * logged["smoothness"]
        assert logged["loss"] == pytest.approx(image + logged.get("dice_loss", 0.0), rel=1e-5)
    assert "dice_loss" in losses[1.0] and "dice_loss" not in losses[0.0]
    assert 0.0 < losses[1.0]["dice_loss"] <= 1.0 and PAIRS == 2


def test_coupled_training_writes_loadable_reg_checkpoints_and_logs_registration_dice(dataset, reg_ckpt, tmp_path):
    ds, split = dataset
    result = train_joint(small_cfg(tmp_path, reg_ckpt), ds, split, progress=False)
    last, best = tmp_path / "run" / "reg" / "last.pt", tmp_path / "run" / "reg" / "best.pt"
    assert last.is_file() and best.is_file()
    fine_tuned = load_backend(f"learned:{last}")
    pretrained = load_backend(f"learned:{reg_ckpt}")
    case = ds.ref("p5_ED").load(), ds.ref("p1_ED").load()
    pair = (case[0].image, case[0].spacing, case[1].image, case[1].spacing)
    assert np.abs(fine_tuned.register(*pair).dense().coords - pretrained.register(*pair).dense().coords).max() > 1e-4
    record = result.history[-1]
    assert 0.0 <= record["regnet_atlas_dice"] <= 1.0 and "regnet_val_pair_dice" in record
    # the gate compares the students with the coupled net as it is at this validation
    assert all(r["gate_registration_dice"] == r["regnet_atlas_dice"] for r in result.history)
    assert all(r["gate_open_a"] == float(r["a_dice"] < r["regnet_atlas_dice"]) for r in result.history)
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["hooks"]["regnet"]
    assert state["reg_steps"] == 5 and bool(torch.cat([m.flatten() for m in
                                                       (v["mask"] for v in state["pseudo"].values())]).any())
    assert not list((tmp_path / "fields").rglob("*.npz"))  # nothing of a changing net on disk
    with pytest.raises(ValueError, match="learned"):
        train_joint(replace(small_cfg(tmp_path, reg_ckpt), out_dir=str(tmp_path / "x"),
                            oracle=replace(small_cfg(tmp_path, reg_ckpt).oracle, backend="identity")),
                    ds, split, progress=False)
    # the served Fields are refined as the spec says, like cctr's: by default, or not at all
    default = CoupledRegistration.from_spec(BackendSpec.parse(f"learned:{reg_ckpt}"), CoupledConfig(), [], [], [], 4)
    assert default.refine == RefineConfig() and default.backend.params["refine"]["steps"] == 16
    assert str(default.backend.spec) == f"learned:{reg_ckpt}"
    alone = CoupledRegistration.from_spec(BackendSpec.parse(f"learned:{reg_ckpt}?refine=0"), CoupledConfig(), [], [], [], 4)
    assert not alone.refine.active and "refine" not in alone.backend.params and alone.reg_steps == 0
    with pytest.raises(ValueError, match="refine_scale=5 must divide"):
        CoupledRegistration.from_spec(BackendSpec.parse(f"learned:{reg_ckpt}?refine_scale=5"), CoupledConfig(),
                                      [], [], [], 4)


# 10 iterations, mid_phase 0.2: a mid-run phase of 2 steps after step 5, between the crash and the end
@pytest.mark.parametrize("iterations,mid_phase", [(6, 0.0), (10, 0.2)])
def test_resume_is_exact_with_both_nets_and_optimisers(dataset, reg_ckpt, tmp_path, iterations, mid_phase):
    ds, split = dataset
    straight = replace(small_cfg(tmp_path, reg_ckpt, mid_phase=mid_phase), iterations=iterations,
                       out_dir=str(tmp_path / "straight"))
    train_joint(straight, ds, split, progress=False)

    class Crash(TrainerHook):
        name = "crash"

        def losses(self, step, batch, outputs):
            if step == 4:
                raise RuntimeError("power cut")
            return {}

    cut = replace(straight, out_dir=str(tmp_path / "cut"))
    with pytest.raises(RuntimeError, match="power cut"):
        train(cut, ds, split, hooks=(Crash(),), methods=TRAINER_METHODS, progress=False)
    # step 3 was saved between a registration step and the next refresh: net and served copy differ
    saved = torch.load(tmp_path / "cut" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["step"] == 3 and saved["hooks"]["regnet"]["served_steps"] < saved["hooks"]["regnet"]["reg_steps"]
    train_joint(cut, ds, split, resume=True, progress=False)

    want = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)
    got = torch.load(tmp_path / "cut" / "last.pt", map_location="cpu", weights_only=True)
    for student in ("a", "b"):
        for key, value in want["students"][student].items():
            assert torch.equal(got["students"][student][key], value), f"student {student}.{key} differs after resume"
    w, g = want["hooks"]["regnet"], got["hooks"]["regnet"]
    for part in ("net", "served"):
        for key, value in w[part].items():
            assert torch.equal(g[part][key], value), f"registration {part}.{key} differs after resume"
    for k, state in w["optimizer"]["state"].items():
        assert torch.equal(g["optimizer"]["state"][k]["exp_avg"], state["exp_avg"])
    assert g["rng"] == w["rng"] and g["reg_steps"] == w["reg_steps"]
    # one per step after the warm-up (a sixth of the run), and the phase
    assert w["reg_steps"] == iterations - round(iterations / 6) + round(mid_phase * iterations)
    assert got["history"] == want["history"]


def test_the_closing_phase_adds_its_steps_after_the_students_last_one(dataset, reg_ckpt, tmp_path):
    """``coupled.final_phase * iterations`` registration steps after the students' last step: the
    students are those of the run without them, the net has taken that many steps more."""
    ds, split = dataset
    plain = replace(small_cfg(tmp_path, reg_ckpt), out_dir=str(tmp_path / "plain"))
    closed = replace(plain, out_dir=str(tmp_path / "closed"), coupled=replace(plain.coupled, final_phase=0.5))
    train_joint(plain, ds, split, progress=False)
    train_joint(closed, ds, split, progress=False)
    p = torch.load(tmp_path / "plain" / "last.pt", map_location="cpu", weights_only=True)
    c = torch.load(tmp_path / "closed" / "last.pt", map_location="cpu", weights_only=True)
    assert c["hooks"]["regnet"]["reg_steps"] == p["hooks"]["regnet"]["reg_steps"] + 3   # 0.5 * 6 iterations
    for key, value in p["students"]["a"].items():
        assert torch.equal(c["students"]["a"][key], value)
    ran = torch.load(tmp_path / "closed" / "reg" / "last.pt", map_location="cpu", weights_only=True)
    assert ran["step"] == c["hooks"]["regnet"]["reg_steps"]
    # the served copy took the finished net for the last validation
    assert all(torch.equal(c["hooks"]["regnet"]["served"][k], v) for k, v in c["hooks"]["regnet"]["net"].items())



def test_the_mid_run_phase_takes_its_steps_once_and_serves_the_net_it_leaves(dataset, reg_ckpt, tmp_path):
    """``coupled.mid_phase * iterations`` registration steps in one go half way through the run,
    and the served copy takes that net at once (RSL and REPS read it from there)."""
    ds, split = dataset
    # every=100: no scheduled step in 8 iterations, so every step taken is the phase's
    cfg = small_cfg(tmp_path, reg_ckpt, every=100, refresh_every=100, mid_phase=0.375)
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    coupled = named(TRAINER_METHODS["cctr-coupled"].build_hooks(replace(cfg, iterations=8), data, tmp_path / "run"), "regnet")
    assert coupled.mid_step == 4 and coupled.mid_steps == 3
    before = {k: v.clone() for k, v in coupled.served.state_dict().items()}
    for step in range(3):
        coupled.after_step(step, labeled_only_batch(), {})
    assert coupled.reg_steps == 0
    coupled.after_step(3, labeled_only_batch(), {})
    assert coupled.reg_steps == 3 and coupled.served_steps == 3 and set(coupled.metrics()) >= {"mid_loss"}
    assert any(not torch.equal(before[k], v) for k, v in coupled.served.state_dict().items())
    for step in range(4, 8):
        coupled.after_step(step, labeled_only_batch(), {})
    assert coupled.reg_steps == 3   # once


def test_the_gate_reads_the_registration_as_served_refined_or_not(dataset, reg_ckpt, tmp_path):
    """``atlas_dice`` (what the gate compares the students with) scores the Fields as they are
    served: refined when the spec refines, the net alone with ``refine=0``."""
    ds, split = dataset
    data = load_train_data(ds, split, "1")
    (tmp_path / "run").mkdir()
    scores = {}
    for spec in (f"learned:{reg_ckpt}", f"learned:{reg_ckpt}?refine=0"):
        cfg = with_backend(small_cfg(tmp_path, reg_ckpt), spec, str(tmp_path / "fields"))
        coupled = named(TRAINER_METHODS["cctr-coupled"].build_hooks(cfg, data, tmp_path / "run"), "regnet")
        pairs = [(v, a) for v in coupled.val for a in coupled.labeled]
        scores[spec] = (coupled.validate(0, {})["atlas_dice"], coupled._pair_scores(pairs)[0],
                        coupled._pair_scores(pairs, refined=True)[0])
    refined, alone = scores.values()
    assert refined[0] == refined[2] and refined[0] != refined[1]   # the refined Fields, not the net's
    assert alone[0] == alone[1] == alone[2] == refined[1]          # nothing to refine: the net alone
