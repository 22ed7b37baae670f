"""scripts/summarize_diagnostics.py reads a benchmark folder's TensorBoard logs into its tables:
best validation Dice and step, and when the validation gate shut RSL for good."""
from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from scripts_module import load_script


@pytest.fixture(scope="module")
def summary():
    return load_script("summarize_diagnostics")


def write_run(run: Path, dice: list[float], opened: list[float], gate_tag: str) -> None:
    writer = SummaryWriter(str(run / "tb"))
    for k, (d, o) in enumerate(zip(dice, opened)):
        writer.add_scalar("val_a/dice", d, 100 * (k + 1))
        writer.add_scalar(gate_tag, o, 100 * (k + 1))
    writer.close()


def test_closed_from_is_the_step_after_which_the_gate_stays_shut(summary):
    assert summary.closed_from([(100, 1.0), (200, 0.0), (300, 1.0), (400, 0.0), (500, 0.0)]) == 400
    assert summary.closed_from([(100, 0.0), (200, 0.0)]) == 100
    assert summary.closed_from([(100, 0.0), (200, 1.0)]) is None


def test_tables_read_best_validation_and_gate_decisions_per_seed(summary, tmp_path):
    runs = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1"
    write_run(runs / "seed-0", [0.5, 0.7, 0.6], [1.0, 0.0, 0.0], "val_gate/open_a")
    write_run(runs / "seed-1", [0.4, 0.5, 0.8], [1.0, 1.0, 1.0], "val_rsl/open_a")   # the older tag
    text = summary.tables(summary.read_runs(tmp_path, "1"))
    mean_row = next(line for line in text.splitlines() if line.startswith("| cctr | learned-x | 2 |"))
    assert "0.7500 ± 0.0500" in mean_row and mean_row.rstrip(" |").endswith("200 / -")
    seed0 = next(line for line in text.splitlines() if line.startswith("| cctr | learned-x | 0 |"))
    assert "| 0.7000 | 200 | 0.6000 |" in seed0


def test_quarter_means_split_a_run_in_four_and_leave_empty_quarters_out(summary):
    series = [(0, 1.0), (10, 3.0), (25, 5.0), (74, 7.0), (100, 9.0)]   # a run of 100 steps
    assert summary.quarter_means(series, 100) == [2.0, 5.0, 7.0, 9.0]
    assert summary.quarter_means([(0, 1.0), (99, 2.0)], 100) == [1.0, None, None, 2.0]


def test_quarter_table_shows_only_the_rsl_figures_a_run_logged(summary, tmp_path):
    run = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1" / "seed-0"
    writer = SummaryWriter(str(run / "tb"))
    for step in range(0, 400, 10):
        writer.add_scalar("rsl/target_acc_hidden", 0.9 if step < 100 else 0.5, step)
        if step < 200:   # closed to both students from the middle on
            writer.add_scalar("rsl/pixel_share", 0.1, step)
    writer.add_scalar("val_a/dice", 0.8, 400)
    writer.close()
    text = summary.quarter_table(summary.read_runs(tmp_path, "1"))
    assert "| cctr | learned-x | RSL acc | 0.900 | 0.500 | 0.500 | 0.500 |" in text
    assert "| cctr | learned-x | RSL share | 0.100 | 0.100 | - | - |" in text
    assert "A acc at RSL" not in text


def test_the_synthesised_samples_share_inside_the_atlas_is_a_column(summary, tmp_path):
    run = tmp_path / "runs" / "cctr" / "learned-x" / "labeled-1" / "seed-0"
    writer = SummaryWriter(str(run / "tb"))
    for step in range(0, 400, 10):
        writer.add_scalar("synth/inside", 0.5 if step < 200 else 0.75, step)   # the second half counts
    writer.add_scalar("val_a/dice", 0.8, 400)
    writer.close()
    lines = summary.tables(summary.read_runs(tmp_path, "1")).splitlines()
    header = next(line for line in lines if line.startswith("| method | backend | seed |"))
    seed0 = next(line for line in lines if line.startswith("| cctr | learned-x | 0 |"))
    assert header.endswith("| synth inside | A closed from |") and seed0.endswith("| 0.7500 | - |")
