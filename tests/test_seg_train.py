"""The trainer at tiny scale: a few steps run and write what they promise; resume is exact;
the extension points are called; bad set-ups are refused."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from layouts import fake_volume
from cctr.seg.config import TrainConfig, load_config
from cctr.seg.data.case import Case, CaseRef, spacing_affine
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.hooks import ExtraSamples, TrainerHook
from cctr.seg.inference import load_students
from cctr.seg.losses import ExtraKeys
from cctr.seg.slices import AugmentConfig
from cctr.seg.students import StudentConfig
from cctr.seg.train import WEIGHT_DECAY, poly_lr, train

NAMES = ("background", "RV", "MYO", "LV")


def _dataset(root: Path) -> tuple[Dataset, Split]:
    refs = []
    for i in range(5):
        pid = f"p{i}"
        image, label = fake_volume(i, (3, 24, 28))
        case = Case(f"{pid}_ED", pid, image, label, (8.0, 1.5, 1.5), spacing_affine((8.0, 1.5, 1.5)), (), NAMES)
        refs.append(CaseRef(case.case_id, pid, True, loader=lambda c=case: c))
    split = Split(train=("p0", "p1", "p2"), val=("p3",), test=("p4",), labeled_sets={"1": ("p0",)})
    return Dataset("memory", root, tuple(refs), NAMES), split


def _cfg(out: Path, method: str = "cct", **changes) -> TrainConfig:
    tiny = replace(
        TrainConfig(),
        method=method,
        out_dir=str(out),
        image_size=(32, 64),
        labeled_batch=2,
        unlabeled_batch=2,
        augment=AugmentConfig(flip=True),
        student_a=StudentConfig(kind="unet", widths=(4, 8)),
        student_b=StudentConfig(kind="swin", feature_size=12, window_size=4),
        iterations=4,
        val_every=2,   # validation and last.pt at steps 2 and 4
        rampup_fraction=0.5,
    )
    return replace(tiny, **changes)


def test_a_cct_run_writes_checkpoints_config_logs_and_validation(tmp_path):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run")
    result = train(cfg, dataset, split, progress=False)
    run = tmp_path / "run"
    assert result.last_checkpoint == run / "last.pt" and result.best_checkpoint == run / "best.pt"
    assert load_config(run / "config.yaml") == cfg
    assert any((run / "tb").iterdir())
    assert [h["step"] for h in result.history] == [2, 4]
    for h in result.history:
        assert 0.0 <= h["a_dice"] <= 1.0 and 0.0 <= h["b_dice"] <= 1.0
    assert result.best_score == max(h["a_dice"] for h in result.history)
    trained = load_students(run / "last.pt")
    assert sorted(trained.students) == ["a", "b"] and trained.step == 4
    optimizers = _weights(run / "last.pt")["optimizers"]
    assert all(o["param_groups"][0]["weight_decay"] == WEIGHT_DECAY for o in optimizers.values())
    case = dataset.refs[4].load()
    pred = trained.predict(case.image, "b")
    assert pred.shape == case.shape and pred.dtype == np.uint8 and pred.max() < 4


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    dataset, split = _dataset(tmp_path)
    train(_cfg(tmp_path / "straight"), dataset, split, progress=False)

    class Crash(TrainerHook):
        name = "crash"

        def losses(self, step, batch, outputs):
            if step == 3:
                raise RuntimeError("power cut")
            return {}

    cfg = _cfg(tmp_path / "cut")
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, dataset, split, hooks=(Crash(),), progress=False)
    assert _weights(tmp_path / "cut" / "last.pt")["step"] == 2
    train(cfg, dataset, split, resume=True, progress=False)

    want, got = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert got["step"] == want["step"] == 4
    for student in ("a", "b"):
        for key, value in want["students"][student].items():
            assert torch.equal(got["students"][student][key], value), f"{student}.{key} differs after resume"
        moments = [s["exp_avg"] for s in want["optimizers"][student]["state"].values()]
        resumed = [s["exp_avg"] for s in got["optimizers"][student]["state"].values()]
        assert all(torch.equal(a, b) for a, b in zip(moments, resumed))
    assert got["history"] == want["history"]
    # the TensorBoard log reads as the uninterrupted run's: the validation logged at the
    # checkpoint's step survives the resume, and no step is logged twice
    assert _logged_steps(tmp_path / "cut") == _logged_steps(tmp_path / "straight")
    assert _logged_steps(tmp_path / "cut")["val_a/dice"] == [2, 4]


def _logged_steps(run: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_existing_runs_are_not_overwritten_and_resume_needs_the_same_config(tmp_path):
    dataset, split = _dataset(tmp_path)
    cfg = _cfg(tmp_path / "run", method="supervised", iterations=2)
    train(cfg, dataset, split, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train(cfg, dataset, split, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(replace(cfg, lr=0.5), dataset, split, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(tmp_path / "empty"), dataset, split, resume=True, progress=False)


def test_supervised_trains_student_a_alone(tmp_path):
    dataset, split = _dataset(tmp_path)
    result = train(_cfg(tmp_path / "sup", method="supervised", iterations=2), dataset, split, progress=False)
    assert list(_weights(result.last_checkpoint)["students"]) == ["a"]
    assert set(result.history[0]) == {"step", "a_dice", "a_hd95", "a_dice_RV", "a_dice_MYO", "a_dice_LV"}
    with pytest.raises(ValueError, match="unknown method"):
        train(_cfg(tmp_path / "bad", method="cctr"), dataset, split, progress=False)
    with pytest.raises(ValueError, match="divisible by 32"):
        train(_cfg(tmp_path / "bad", image_size=(48, 48)), dataset, split, progress=False)


class ProbeHook(TrainerHook):
    """A hook using every method of the protocol, recording what the trainer did with it."""

    name = "probe"

    def __init__(self) -> None:
        self.calls, self.after, self.grads, self.validated, self.saved = 0, 0, [], [], []
        self.asked, self.indices, self.inspected = [], [], []

    def losses(self, step, batch, outputs):
        self.calls += 1
        loss = 0.01 * outputs["b"].logits.mean()
        loss.register_hook(self.grads.append)  # fires only if the loss reaches backward()
        return {"b": loss}

    def extra_positive(self, step, batch, outputs, student, anchors):
        self.asked.append(student)
        b, d, h, w = outputs[student].embedding.shape
        index = anchors.flat_index
        assert anchors.classes.shape == index.shape
        self.indices.append((index.min().item(), index.max().item(), b * h * w))
        return ExtraKeys(outputs[student].embedding.detach().new_zeros(index.numel(), d),
                         torch.zeros(index.numel(), dtype=torch.bool))

    def metrics(self):
        return {"calls": float(self.calls)}

    def validate(self, step, scores):
        assert scores and all(0.0 <= r["dice"] <= 1.0 for r in scores.values())   # the students' own scores
        self.validated.append(step)
        return {"seen": float(self.calls)}

    def checkpoint(self, out_dir, best):
        self.saved.append(best)

    def inspect_losses(self, step, batch, outputs, losses):
        assert all(v.requires_grad for v in losses.values())  # called before backward, graph alive
        self.inspected.append(sorted(losses))

    def after_step(self, step, batch, outputs):
        assert not outputs["a"].embedding.requires_grad
        self.after += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_every_hook_method_joins_the_loop(tmp_path):
    dataset, split = _dataset(tmp_path)
    hook = ProbeHook()
    # diag_every=0: the diagnostics' gradient probes would also fire the loss's tensor hook
    result = train(_cfg(tmp_path / "run", cl_weight=1.0, contrast=replace(TrainConfig().contrast, confidence=0.0),
                        diag_every=0), dataset, split, hooks=(hook,), progress=False)
    assert hook.calls == hook.after == 4
    assert len(hook.grads) == 4 and all(float(g) == 1.0 for g in hook.grads)
    assert hook.inspected == [["a/cps", "a/sup", "b/cps", "b/probe", "b/sup", "joint/cl"]] * 4
    assert _weights(result.last_checkpoint)["hooks"] == {"probe": {"calls": 4}, "diag": {}}
    assert hook.asked == ["a", "b"] * 4
    assert hook.indices and all(0 <= lo <= hi < n for lo, hi, n in hook.indices)
    assert hook.validated == [r["step"] for r in result.history] and result.history[-1]["probe_seen"] == 4.0
    assert True in hook.saved and False in hook.saved  # told of best.pt and of last.pt


class SampleHook(TrainerHook):
    """Adds ``count`` labeled samples (all class 1) per step, with loss factor ``weight``."""

    name = "samples"

    def __init__(self, count: int, weight: float) -> None:
        self.count, self.weight = count, weight

    def extra_samples(self, step, batch):
        H, W = batch.image.shape[-2:]
        return ExtraSamples(torch.randn(self.count, 1, H, W, generator=torch.Generator().manual_seed(step)),
                            torch.ones(self.count, H, W, dtype=torch.int64), self.weight)


class RowsProbe(ProbeHook):
    """Records how many rows the outputs given to the other hooks have."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = []

    def losses(self, step, batch, outputs):
        self.rows.append((batch.image.shape[0], outputs["a"].logits.shape[0], outputs["b"].embedding.shape[0]))
        return super().losses(step, batch, outputs)


def test_a_hooks_extra_samples_train_the_students_and_stay_out_of_the_batch(tmp_path):
    dataset, split = _dataset(tmp_path)
    weights = {}
    for weight in (0.0, 1.0):
        probe = RowsProbe()
        result = train(_cfg(tmp_path / f"w{weight}", diag_every=0), dataset, split,
                       hooks=(SampleHook(3, weight), probe), progress=False)
        assert probe.rows == [(4, 4, 4)] * 4          # 2 labeled + 2 unlabeled; the 3 extra rows are not theirs
        assert probe.inspected[0] == ["a/cps", "a/samples", "a/sup", "b/cps", "b/probe", "b/samples", "b/sup", "joint/cl"]
        weights[weight] = _weights(result.last_checkpoint)["students"]["a"]
    # the same forward passes in both runs, so only the extra samples' loss can tell them apart
    assert any(not torch.equal(weights[0.0][k], weights[1.0][k]) for k in weights[0.0])
    with pytest.raises(ValueError, match=r"image \(S, 1, H, W\) and label \(S, H, W\)"):
        ExtraSamples(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9, dtype=torch.int64), 1.0)


def test_a_step_without_extra_samples_still_logs_their_term(tmp_path):
    dataset, split = _dataset(tmp_path)
    probe = ProbeHook()
    train(_cfg(tmp_path / "none", diag_every=0), dataset, split, hooks=(SampleHook(0, 1.0), probe), progress=False)
    assert "a/samples" in probe.inspected[-1] and "b/samples" in probe.inspected[-1]


def test_hooks_must_have_distinct_names_and_one_extra_positive_per_student(tmp_path):
    dataset, split = _dataset(tmp_path)
    with pytest.raises(ValueError, match="distinct names"):
        train(_cfg(tmp_path / "twice"), dataset, split, hooks=(ProbeHook(), ProbeHook()), progress=False)
    other = ProbeHook()
    other.name = "other"
    with pytest.raises(ValueError, match="extra positive"):
        train(_cfg(tmp_path / "clash", cl_weight=1.0, contrast=replace(TrainConfig().contrast, confidence=0.0)),
              dataset, split, hooks=(ProbeHook(), other), progress=False)


def test_poly_learning_rate():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)   # SSL4MIS's power, always
    assert poly_lr(0.01, 100, 100) == 0.0


def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, monkeypatch):
    dataset, split = _dataset(tmp_path)
    with pytest.raises(ValueError, match="not a torch device"):
        train(_cfg(tmp_path / "bad", device="gpu0"), dataset, split, progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA"):
        train(_cfg(tmp_path / "cuda", device="cuda"), dataset, split, progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "cuda").exists()
