"""``cctr benchmark`` at tiny scale: the grid it plans, the CSV / markdown / plot it writes, a
re-run that skips finished runs, one table over grids run separately, and the mean ± std over
seeds of its table."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import cctr.joint.app.benchmark as bench
from cctr.joint.app.benchmark import Run, RunResult, backend_tag, plan_runs, results_markdown
from cctr.joint.app.cli import main
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.metrics import ClassScore

TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}",
        "--set", "student_b={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]
# --threads 0: leave the test process's torch threads as they are
GRID = ["--methods", "supervised,cctr,registration-only", "--backends", "identity", "--labeled", "1", "--seeds", "1",
        "--threads", "0"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    data = write_phantom(root / "data", 4, seed=0, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    out = root / "out"
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *TINY]) == 0
    return data, out


def test_plan_crosses_backends_only_with_registration_methods():
    runs = plan_runs(["supervised", "cctr", "registration-only"], ["identity", "sitk-demons"], ["1", "3"], [0, 1, 2])
    assert len(runs) == 2 * 3 * (1 + 2 + 2)
    assert {r.backend for r in runs if r.method == "supervised"} == {""}
    assert {r.backend for r in runs if r.method == "cctr"} == {"identity", "sitk-demons"}
    assert runs[0] == Run("supervised", "", "1", 0) and runs[-1] == Run("registration-only", "sitk-demons", "3", 2)
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(["cctr-plus"], ["identity"], ["1"], [0])
    with pytest.raises(ValueError, match="need at least one --backends"):
        plan_runs(["cctr"], [], ["1"], [0])
    assert len(plan_runs(["supervised", "ct"], [], ["1"], [0])) == 2
    # cctr-coupled fine-tunes a learned net: a classical backend has none to train
    coupled = plan_runs(["cctr-coupled"], ["identity", "learned:/x/a.pt?refine=0"], ["1"], [0])
    assert [r.backend for r in coupled] == ["learned:/x/a.pt?refine=0"]


def test_backend_folders_are_distinct_and_readable():
    assert backend_tag("") == "none" and backend_tag("identity") == "identity"
    a, b = backend_tag("learned:/x/a.pt"), backend_tag("learned:/x/b.pt")
    assert a.startswith("learned-") and b.startswith("learned-") and a != b
    assert backend_tag("sitk-demons?iterations=5").startswith("sitk-demons-")
    assert backend_tag("sitk-demons?iterations=5") != backend_tag("sitk-demons?iterations=6")
    with pytest.raises(ValueError, match="unknown registration backend"):
        backend_tag("elastix")


def test_grid_writes_one_csv_row_per_run_and_class_and_one_table_row_per_cell(grid):
    _, out = grid
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4   # (supervised, cctr/identity, registration-only/identity) x (3 classes + mean)
    assert {(r["method"], r["backend"]) for r in rows} == {("supervised", ""), ("cctr", "identity"),
                                                           ("registration-only", "identity")}
    assert {r["class"] for r in rows} == {"RV", "MYO", "LV", "mean"} and {r["cases"] for r in rows} == {"2"}
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95_mm"]) >= 0.0
    table = (out / "results.md").read_text()
    assert "| supervised | - | 1 | 1 |" in table and "| cctr | `identity` | 1 | 1 |" in table
    assert "| registration-only | `identity` | 1 | 1 |" in table
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(str(p.parent.relative_to(out)) for p in (out / "runs").rglob("result.json")) == [
        "runs/cctr/identity/labeled-1/seed-0", "runs/registration-only/identity/labeled-1/seed-0",
        "runs/supervised/none/labeled-1/seed-0"]


def test_a_rerun_skips_finished_runs_and_refuses_other_options(grid, monkeypatch):
    data, out = grid
    before = (out / "results.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(bench, "train_segmentation", refuse)
    monkeypatch.setattr(bench, "registration_only", refuse)
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *TINY]) == 0
    assert (out / "results.csv").read_text() == before
    changed = [a if a != "iterations=2" else "iterations=3" for a in TINY]
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *changed]) == 2


def test_a_moved_benchmark_folder_keeps_its_finished_runs(grid, tmp_path, monkeypatch):
    data, out = grid
    moved = tmp_path / "elsewhere" / "bench"
    shutil.copytree(out, moved)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(bench, "train_segmentation", refuse)
    monkeypatch.setattr(bench, "registration_only", refuse)
    assert main(["benchmark", "--data", str(data), "--out", str(moved), "--no-progress", *GRID, *TINY]) == 0
    assert (moved / "results.csv").read_text() == (out / "results.csv").read_text()


def test_table_cells_are_mean_and_population_std_over_seeds():
    names = ("background", "A", "B")

    def result(seed: int, dice_a: float, dice_b: float) -> RunResult:
        scores = {"v1": {1: ClassScore(dice_a, 2.0, 1.0), 2: ClassScore(dice_b, 4.0, 1.0)}}
        return RunResult(Run("cct", "", "1", seed), names, scores)

    table = results_markdown([result(0, 0.5, 0.9), result(1, 0.7, 0.9)], Path("d"))
    row = next(line for line in table.splitlines() if line.startswith("| cct |"))
    assert row == ("| cct | - | 1 | 2 | 0.6000 ± 0.1000 | 0.9000 ± 0.0000 | 0.7500 ± 0.0500 "
                   "| 2.00 ± 0.00 | 4.00 ± 0.00 | 3.00 ± 0.00 |")


def test_tabulate_joins_grids_run_by_separate_commands(grid, tmp_path, capsys):
    data, out = grid
    joined = tmp_path / "joined"
    shutil.copytree(out / "runs", joined / "runs")
    # a second process's share of seeds: seed 1 alone
    second = ["--methods", "ct", "--labeled", "1", "--seeds", "1", "--first-seed", "1", "--threads", "0"]
    assert main(["benchmark", "--data", str(data), "--out", str(joined), "--no-progress", *second, *TINY]) == 0
    assert [p.name for p in (joined / "runs" / "ct" / "none" / "labeled-1").iterdir()] == ["seed-1"]
    assert "| supervised |" not in (joined / "results.md").read_text()   # a grid's own table: its runs only

    assert main(["benchmark", "--out", str(joined), "--tabulate"]) == 0
    assert f"Data: `{data.resolve()}`" in (joined / "results.md").read_text()   # where the runs ran, not joined/data
    table = [line for line in (joined / "results.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in table] == ["supervised", "ct", "cctr", "registration-only"]
    with open(joined / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4 * 4

    edited = joined / "runs" / "ct" / "none" / "labeled-1" / "seed-1" / "result.json"
    edited.write_text(edited.read_text().replace('"patient', '"other'))
    assert main(["benchmark", "--out", str(joined), "--tabulate"]) == 2
    assert "scored on different test volumes" in capsys.readouterr().err
    assert main(["benchmark", "--out", str(tmp_path / "empty"), "--tabulate"]) == 2
    assert main(["benchmark", "--data", str(data), "--out", str(tmp_path / "bad"), "--first-seed", "-1", *TINY]) == 2
    assert "--first-seed >= 0" in capsys.readouterr().err
