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
    text = summary.tables(tmp_path, "1")
    mean_row = next(line for line in text.splitlines() if line.startswith("| cctr | learned-x | 2 |"))
    assert "0.7500 ± 0.0500" in mean_row and mean_row.rstrip(" |").endswith("200 / -")
    seed0 = next(line for line in text.splitlines() if line.startswith("| cctr | learned-x | 0 |"))
    assert "| 0.7000 | 200 | 0.6000 |" in seed0
