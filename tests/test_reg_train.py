"""Pretraining at tiny scale: outputs, pair sampling, Dice supervision, and a resumed run that
is bit-identical to an uninterrupted one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cctr.reg.checkpoint import read_checkpoint
from cctr.reg.config import RegConfig
from cctr.seg.config import load_config as load_any_config
from cctr.reg.train import Volume, sample_pairs, train, validation_pairs
from tests.reg_synthetic import Motion, volume, one_torch_thread  # noqa: F401 (autouse)

TINY = {
    "grid": {"shape": [16, 32, 32], "spacing": [4.0, 2.4, 2.4]},
    "net": {"nb_features": [4, 4, 4, 4]},
    "train": {"steps": 4, "batch_size": 2, "val_every": 2, "val_pairs": 2},
}


def _volumes(patients: int, labeled: bool, seed: int) -> list[Volume]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(patients):
        base = Motion(np.deg2rad(rng.uniform(-20, 20)), (0.0, *rng.uniform(-4, 4, 2)))
        for frame, extra in (("ED", 0.0), ("ES", 2.0)):
            img, lab = volume((8, 40, 40), (6.0, 1.6, 1.6), Motion(base.angle, (0.0, base.shift_mm[1] + extra, base.shift_mm[2])))
            out.append(Volume(f"p{seed}{p}_{frame}", f"p{seed}{p}", img, (6.0, 1.6, 1.6), lab if labeled else None))
    return out


@pytest.fixture(scope="module")
def data():
    return _volumes(3, labeled=False, seed=1), _volumes(2, labeled=True, seed=2)


def _config(**train) -> RegConfig:
    return RegConfig.from_dict(TINY).with_overrides(**train)


def test_training_writes_config_checkpoints_and_logs(tmp_path, data):
    train_vols, val_vols = data
    best = train(_config(), train_vols, val_vols, 4, tmp_path / "run")
    run = tmp_path / "run"
    assert best == run / "best.pt" and (run / "last.pt").is_file()
    assert load_any_config(run / "config.yaml", RegConfig()) == _config()
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["step"] == 4 and set(ckpt["rng"]) == {"numpy", "torch"}
    assert {"model", "optimizer", "config", "best_score"} <= set(ckpt)
    assert 0.0 <= ckpt["best_score"] <= 1.0
    assert list((run / "tb").glob("events.out.tfevents.*"))


def test_resume_is_bit_identical(tmp_path, data, monkeypatch):
    import cctr.reg.train
    monkeypatch.setattr(cctr.reg.train, "LOG_EVERY", 1)   # loss scalars at every step: each must be logged once
    train_vols, val_vols = data
    train(_config(steps=4), train_vols, val_vols, 4, tmp_path / "straight")
    train(_config(steps=2), train_vols, val_vols, 4, tmp_path / "split")
    assert read_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    train(_config(steps=4), train_vols, val_vols, 4, tmp_path / "split", resume=True)
    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    b = read_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][key][name])), (key, name)
    assert a["rng"]["numpy"] == b["rng"]["numpy"]
    # the resumed log keeps the validation logged at the interruption's step, and repeats no step
    assert _logged_steps(tmp_path / "split") == _logged_steps(tmp_path / "straight")
    assert _logged_steps(tmp_path / "split")["val/dice"] == [2, 4]


def _logged_steps(run: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_resume_refuses_a_changed_config_and_overwriting(tmp_path, data):
    train_vols, val_vols = data
    train(_config(steps=2), train_vols, val_vols, 4, tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run"):
        train(_config(steps=2), train_vols, val_vols, 4, tmp_path / "run")
    changed = RegConfig.from_dict({**TINY, "loss": {"smoothness_weight": 5.0}}).with_overrides(steps=3)
    with pytest.raises(ValueError, match="different config"):
        train(changed, train_vols, val_vols, 4, tmp_path / "run", resume=True)
    with pytest.raises(FileNotFoundError):
        train(_config(), train_vols, val_vols, 4, tmp_path / "empty", resume=True)


def test_dice_supervision_uses_labeled_pairs(tmp_path, data):
    _, val_vols = data
    labeled_train = _volumes(2, labeled=True, seed=3)
    config = RegConfig.from_dict({**TINY, "loss": {"dice_weight": 1.0}}).with_overrides(steps=2)
    train(config, labeled_train, val_vols, 4, tmp_path / "run")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert "loss/dice" in events.Tags()["scalars"]
    assert "pair/fixed_moving_warped_grid" in events.Tags()["images"]


def test_pair_sampling_follows_the_intra_patient_share(data):
    train_vols, _ = data
    rng = np.random.default_rng(0)
    intra = sample_pairs(rng, train_vols, 50, intra_fraction=1.0)
    inter = sample_pairs(rng, train_vols, 50, intra_fraction=0.0)
    assert all(train_vols[a].patient_id == train_vols[b].patient_id and a != b for a, b in intra)
    assert all(train_vols[a].patient_id != train_vols[b].patient_id for a, b in inter)
    mixed = sample_pairs(np.random.default_rng(1), train_vols, 400, intra_fraction=0.25)
    share = np.mean([train_vols[a].patient_id == train_vols[b].patient_id for a, b in mixed])
    assert 0.18 < share < 0.32


def test_validation_pairs_are_labeled_and_fixed(data):
    _, val_vols = data
    pairs = validation_pairs(val_vols, 3, seed=0)
    assert pairs == validation_pairs(val_vols, 3, seed=0) and len(pairs) == 3
    assert all(val_vols[a].patient_id != val_vols[b].patient_id for a, b in pairs)
    unlabeled = [Volume(v.case_id, v.patient_id, v.image, v.spacing) for v in val_vols]
    assert validation_pairs(unlabeled, 3, seed=0) == []


def test_too_few_volumes_is_an_error(tmp_path, data):
    train_vols, val_vols = data
    with pytest.raises(ValueError, match="at least two"):
        train(_config(), train_vols[:1], val_vols, 4, tmp_path / "run")


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("net:\n  widths: [4, 4]\n")
    with pytest.raises(ValueError, match="unknown option"):
        load_any_config(bad, RegConfig())
    bad.write_text("grid:\n  shape: [10, 64, 64]\n")
    with pytest.raises(ValueError, match="divisible by 16"):
        load_any_config(bad, RegConfig())
    for gone in ("train:\n  log_every: 5\n", "train:\n  image_every: 50\n", "prealign:\n  downsample: 2\n"):
        bad.write_text(gone)   # logging every LOG_EVERY steps, the image panel at val_every, the search's constants
        with pytest.raises(ValueError, match="unknown option"):
            load_any_config(bad, RegConfig())
    assert load_any_config(Path(__file__).parents[1] / "configs" / "reg_default.yaml", RegConfig()) == RegConfig()


def test_a_checkpoint_of_an_earlier_version_loads_when_its_retired_options_had_the_fixed_value():
    old = {**TINY, "prealign": {"method": "search", "bright_percentile": 90.0, "max_angle_deg": 60.0,
                                "angle_step_deg": 5.0, "max_shift_mm": 40.0, "downsample": 2},
           "train": {**TINY["train"], "log_every": 1, "image_every": 2}}
    assert RegConfig.from_dict(old) == RegConfig.from_dict(TINY)   # logging options never changed the net
    with pytest.raises(ValueError, match="bright_percentile=80.0 is no longer supported"):
        RegConfig.from_dict({**TINY, "prealign": {"bright_percentile": 80.0}})


def test_one_registration_loss_weighs_its_terms():
    """Pretraining, coupled training and refinement share :class:`reg.losses.RegistrationLoss`:
    similarity plus the weighted smoothness, and the Dice term of warped labels on the side."""
    import cctr.reg.config
    from cctr.reg.losses import LossConfig, RegistrationLoss

    assert cctr.reg.config.LossConfig is LossConfig   # still importable where it lived
    loss = RegistrationLoss(LossConfig(similarity="mse", smoothness_weight=0.5))
    gen = torch.Generator().manual_seed(0)
    warped, fixed = torch.rand(2, 1, 8, 16, 16, generator=gen), torch.rand(2, 1, 8, 16, 16, generator=gen)
    disp = torch.randn(2, 3, 8, 16, 16, generator=gen)
    terms = loss(warped, fixed, disp)
    assert float(terms.similarity) == pytest.approx(float(((warped - fixed) ** 2).mean()), rel=1e-5)
    assert float(terms.smoothness) > 0
    assert float(terms.total) == pytest.approx(float(terms.similarity) + 0.5 * float(terms.smoothness), rel=1e-6)
    assert float(loss(fixed, fixed, torch.zeros_like(disp)).total) == 0.0
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 8, 16, 16), generator=gen), 3)
    onehot = onehot.permute(0, 4, 1, 2, 3).float()
    assert float(loss.dice(onehot, onehot)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss.dice(onehot, onehot.roll(1, dims=1))) == pytest.approx(1.0, abs=1e-6)   # every label wrong
