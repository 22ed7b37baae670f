"""The trainer configuration: YAML round trip, overrides with checked types, the shipped files."""
from __future__ import annotations

from pathlib import Path

import pytest

from cctr.seg.config import PRESETS, TrainConfig, apply_overrides, differences, load_config, preset, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_round_trip_keeps_every_option(tmp_path):
    cfg = apply_overrides(TrainConfig(), ["student_b.feature_size=24", "augment.flip=true", "image_size=[96,128]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_typed_nested_and_checked():
    cfg = apply_overrides(TrainConfig(), ["lr=1e-3", "labeled=3", "student_a.widths=[8,16,32]", "contrast.temperature=0.2"])
    assert cfg.lr == 0.001 and cfg.labeled == "3" and cfg.student_a.widths == (8, 16, 32)
    assert cfg.contrast.temperature == 0.2
    assert differences(cfg, TrainConfig()) == ["labeled", "student_a.widths", "lr", "contrast.temperature"]
    for bad, message in [("iterations=1.5", "integer"), ("no_such=1", "unknown option"),
                         ("student_a.widthz=[1]", "student_a.widthz"), ("image_size=[64]", "2 values"),
                         ("augment=3", "mapping"), ("augment.flip=maybe", "true or false"), ("lr", "key=value")]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(TrainConfig(), [bad])


@pytest.mark.parametrize("gone", ["poly_power=0.9", "weight_decay=0.0001", "checkpoint_every=100",
                                  "select_student=b", "infer_batch=8", "overlays=false", "elastic.weight=0.5",
                                  "student_a.norm=batch", "student_a.embedding_dim=64", "student_b.depths=[2,2,2,2]",
                                  "student_b.num_heads=[3,6,12,24]"])
def test_options_that_became_constants_are_refused_as_unknown(gone):
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(TrainConfig(), [gone])


def test_the_embedding_size_is_one_option_of_the_run():
    assert apply_overrides(TrainConfig(), ["embedding_dim=64"]).embedding_dim == 64
    with pytest.raises(ValueError, match="embedding_dim"):
        TrainConfig(embedding_dim=0)


def test_a_partial_yaml_file_applies_over_the_base(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iterations: 50\nstudent_b:\n  feature_size: 24\n")
    cfg = load_config(path, preset("paper"))
    assert cfg.iterations == 50 and cfg.student_b.feature_size == 24
    assert cfg.image_size == preset("paper").image_size
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize("name, file", [("cpu-small", "seg_cpu_small.yaml"), ("paper", "seg_paper.yaml")])
def test_shipped_config_files_equal_the_named_presets(name, file):
    assert load_config(CONFIGS / file) == PRESETS[name]
