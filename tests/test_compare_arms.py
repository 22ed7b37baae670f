"""scripts/compare_arms.py pairs arms by seed: best validation Dice from the logs, test Dice as
the benchmark's table has it, differences against the first arm."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from cctr.joint.app.benchmark import RESULT_FILE, Run
from scripts_module import load_script


@pytest.fixture(scope="module")
def compare():
    return load_script("compare_arms")


def write_run(bench: Path, method: str, seed: int, val: list[float], test_dice: tuple[float, float]) -> None:
    """A finished run: validation Dice every 100 steps, and two test volumes scored on one class
    with the given Dice each."""
    run = Run(method, "", "1", seed)
    folder = bench / run.folder
    writer = SummaryWriter(str(folder / "tb"))
    for k, d in enumerate(val):
        writer.add_scalar("val_a/dice", d, 100 * (k + 1))
    writer.close()
    scores = {f"case{i}": {"1": {"dice": d, "hd95": 1.0, "asd": 0.5}} for i, d in enumerate(test_dice)}
    (folder / RESULT_FILE).write_text(json.dumps({
        "run": {"method": method, "backend": "", "labeled": "1", "seed": seed},
        "class_names": ["background", "organ"], "scores": scores}))


def test_arms_are_compared_seed_by_seed_against_the_first(compare, tmp_path):
    write_run(tmp_path / "a", "ct", 0, [0.5, 0.7, 0.6], (0.8, 0.6))
    write_run(tmp_path / "a", "ct", 1, [0.6, 0.65], (0.7, 0.7))
    write_run(tmp_path / "b", "cct", 0, [0.75, 0.7], (0.9, 0.7))
    write_run(tmp_path / "b", "cct", 1, [0.7], (0.6, 0.7))
    write_run(tmp_path / "b", "cct", 2, [0.9], (0.9, 0.9))   # no control seed to pair with
    arms = [compare.read_arm(*compare.parse_spec(f"{n}={tmp_path / n}"), "1") for n in ("a", "b")]
    assert arms[0].val == pytest.approx({0: 0.7, 1: 0.65}) and arms[0].test == pytest.approx({0: 0.7, 1: 0.7})
    text = compare.tables(arms)
    assert "| a | ct (none) | 0, 1 | 0.675 ± 0.035 | 0.700 / 0.650 | 0.700 ± 0.000 | 0.700 / 0.700 |" in text
    # val: +0.05 and +0.05; test: +0.1 and -0.05 -> mean +0.025, standard error 0.075
    assert "| b | 0, 1 | +0.050 ± 0.000 | +0.025 ± 0.075 |" in text


def test_a_folder_of_several_methods_needs_one_named(compare, tmp_path):
    write_run(tmp_path / "mixed", "ct", 0, [0.5], (0.5, 0.5))
    write_run(tmp_path / "mixed", "cct", 0, [0.6], (0.6, 0.6))
    with pytest.raises(SystemExit, match="2 method/backend groups.*NAME=DIR:METHOD"):
        compare.main([f"x={tmp_path / 'mixed'}"])
    arm = compare.read_arm(*compare.parse_spec(f"x={tmp_path / 'mixed'}:cct"), "1")
    assert arm.method == "cct" and arm.val == pytest.approx({0: 0.6})


def test_bad_arm_specs_and_empty_folders_are_named(compare, tmp_path):
    with pytest.raises(SystemExit, match="NAME=BENCHMARK_DIR"):
        compare.main([str(tmp_path)])
    with pytest.raises(SystemExit, match=f"{tmp_path}.*no finished benchmark runs"):
        compare.main([f"x={tmp_path}"])
