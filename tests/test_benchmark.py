"""``cctr benchmark`` at tiny scale: the grid it plans (methods x backends x labeled draws x
seeds), the benchmark's split with every draw, both checkpoint rules scored on the validation
and test volumes, the long results.csv, the paired comparisons with a control, results.md,
results.png, a re-run that skips finished runs, one table over grids run separately (with
another control), ``cctr inspect compare`` on two arms, and the generated phantom."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cctr.joint.app.benchmark as bench
import cctr.joint.app.commands.benchmark as bench_command
from cctr.joint.app.benchmark import DrawSetup, Run, RunResult, backend_tag, collect_results, plan_runs, run_config
from cctr.joint.app.cli import main
from cctr.joint.app.comparison import (COMPARISON_COLUMNS, CSV_COLUMNS, comparisons, results_csv,
                                       results_markdown)
from cctr.joint.config import JointConfig
from cctr.reg.placement import FrontEnd
from cctr.seg.data.phantom import PhantomConfig, make_patient, write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split, with_drawn_sets
from cctr.seg.metrics import ClassScore

TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}",
        "--set", "student_b={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]
# --threads 0: leave the test process's torch threads as they are
GRID = ["--methods", "supervised,ct,cctr,registration-only", "--backends", "identity", "--labeled", "1",
        "--draws", "2", "--seeds", "1", "--threads", "0"]
GROUPS = [("supervised", ""), ("ct", ""), ("cctr", "identity"), ("registration-only", "identity")]
TRAINED = [("supervised", "none"), ("ct", "none"), ("cctr", "identity")]
CLASSES = {"RV", "MYO", "LV", "mean"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path]:
    """A 4-patient phantom (2 training patients: 2 draws of one labeled patient, 1 validation
    and 1 test patient: 2 volumes each) and the benchmark of GRID on it."""
    root = tmp_path_factory.mktemp("bench")
    data = write_phantom(root / "data", 4, seed=0, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    out = root / "out"
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *TINY]) == 0
    return data, out


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def refuse(*args, **kwargs):
    raise AssertionError("a finished run ran again")


def test_plan_crosses_draws_seeds_and_backends_only_with_registration_methods():
    runs = plan_runs(["supervised", "cctr", "registration-only"], ["identity", "sitk-demons"], ["1", "3"], 2, [0, 1])
    assert len(runs) == 2 * 2 * 2 * (1 + 2 + 2)   # labeled sets x draws x seeds x (method, backend)
    assert {r.backend for r in runs if r.method == "supervised"} == {""}
    assert {r.backend for r in runs if r.method == "cctr"} == {"identity", "sitk-demons"}
    assert {(r.labeled, r.draw, r.seed) for r in runs} == {(l, d, s) for l in "13" for d in (0, 1) for s in (0, 1)}
    assert runs[0] == Run("supervised", "", "1", 0, 0) and runs[-1] == Run("registration-only", "sitk-demons", "3", 1, 1)
    # draw by draw, seed by seed: a partial grid already compares the methods
    assert [(r.draw, r.seed) for r in runs[:10]] == [(0, 0)] * 5 + [(0, 1)] * 5
    assert Run("cctr", "identity", "1", 1, 0).folder == Path("runs/cctr/identity/labeled-1/draw-1/seed-0")
    assert Run("ct", "", "all", 0, 2).folder == Path("runs/ct/none/labeled-all/draw-0/seed-2")
    # 'all' has one draw: every training patient
    assert {r.draw for r in plan_runs(["ct"], [], ["all"], 3, [0])} == {0}
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(["cctr-plus"], ["identity"], ["1"], 1, [0])
    with pytest.raises(ValueError, match="need at least one --backends"):
        plan_runs(["cctr"], [], ["1"], 1, [0])
    with pytest.raises(ValueError, match="one draw"):
        plan_runs(["ct"], [], ["1"], 0, [0])
    assert len(plan_runs(["supervised", "ct", "cctr+"], ["identity"], ["1"], 3, [0])) == 9
    # cctr-coupled fine-tunes a learned net: a classical backend has none to train, a bare 'learned' has
    coupled = plan_runs(["cctr-coupled"], ["identity", "learned:/x/a.pt?refine=0", "learned"], ["1"], 1, [0])
    assert [r.backend for r in coupled] == ["learned:/x/a.pt?refine=0", "learned"]


def test_backend_folders_are_distinct_and_readable():
    assert backend_tag("") == "none" and backend_tag("identity") == "identity"
    assert backend_tag("learned") == "learned"   # a bare 'learned': each draw's pretrained net
    a, b = backend_tag("learned:/x/a.pt"), backend_tag("learned:/x/b.pt")
    assert a.startswith("learned-") and b.startswith("learned-") and a != b != "learned"
    assert backend_tag("sitk-demons?iterations=5").startswith("sitk-demons-")
    assert backend_tag("sitk-demons?iterations=5") != backend_tag("sitk-demons?iterations=6")
    with pytest.raises(ValueError, match="unknown registration backend"):
        backend_tag("elastix")


def test_a_draws_setup_gives_its_labeled_set_and_its_learned_net(tmp_path):
    net = tmp_path / "reg" / "best.pt"
    setup = DrawSetup("1~2", JointConfig(), FrontEnd(), learned=net)
    assert setup.backend_spec("learned") == f"learned:{net}"
    assert setup.backend_spec("identity") == "identity"
    cfg = run_config(setup, Run("cctr", "learned", "1", 2, 1), tmp_path / "run")
    assert (cfg.method, cfg.labeled, cfg.seed, cfg.out_dir) == ("cctr", "1~2", 1, str(tmp_path / "run"))
    assert cfg.oracle.backend == f"learned:{net}"
    plain = run_config(setup, Run("ct", "", "1", 2, 0), tmp_path / "ct")
    assert plain.labeled == "1~2" and plain.oracle.backend == JointConfig().oracle.backend
    with pytest.raises(ValueError, match="pretrained net"):
        DrawSetup("1", JointConfig(), FrontEnd()).backend_spec("learned")


def test_runs_live_in_one_folder_per_draw_and_seed_and_the_split_holds_every_draw(grid):
    data, out = grid
    markers = sorted(str(p.parent.relative_to(out)) for p in (out / "runs").rglob("result.json"))
    assert markers == [f"runs/{m}/{b}/labeled-1/draw-{d}/seed-0"
                       for m, b in sorted([*TRAINED, ("registration-only", "identity")]) for d in (0, 1)]
    own = open_dataset(data).default_split
    split = load_split(out / "split.json")
    assert set(split.labeled_sets) == set(own.labeled_sets) | {"1~1"}
    assert split.labeled("1") == own.labeled("1") and len(split.labeled("1~1")) == 1
    assert split.labeled("1~1") != split.labeled("1")
    assert split == with_drawn_sets(own, "1", 2)[0]   # the draws the benchmark recorded are the split's
    for draw, labeled_set in ((0, "1"), (1, "1~1")):
        marker = json.loads((out / f"runs/ct/none/labeled-1/draw-{draw}/seed-0/result.json").read_text())
        assert marker["run"] == {"method": "ct", "backend": "", "labeled": "1", "draw": draw, "seed": 0}
        assert marker["config"]["labeled"] == labeled_set   # each draw trains on its own labeled patient
        assert set(marker["scores"]) == {"val", "test"}
        assert all(set(by_rule) == {"best", "last"} for by_rule in marker["scores"].values())
        assert set(marker["scores"]["val"]["best"]) == {f"{p}_{f}" for p in own.val for f in ("ED", "ES")}
        assert set(marker["scores"]["test"]["best"]) == {f"{p}_{f}" for p in own.test for f in ("ED", "ES")}


def test_results_csv_has_a_row_per_run_subset_checkpoint_and_class(grid):
    _, out = grid
    rows = rows_of(out / "results.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4 * 2 * 2 * 2 * 4   # groups x draws x subsets x checkpoint rules x (3 classes + mean)
    assert {(r["method"], r["backend"]) for r in rows} == set(GROUPS)
    assert {r["draw"] for r in rows} == {"0", "1"} and {r["seed"] for r in rows} == {"0"}
    assert {r["subset"] for r in rows} == {"val", "test"} and {r["checkpoint"] for r in rows} == {"best", "last"}
    assert {r["class"] for r in rows} == CLASSES and {r["cases"] for r in rows} == {"2"}
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95_mm"]) >= 0.0
    # registration-only has no checkpoint to choose: both rules are the same scores
    reg = {(r["draw"], r["subset"], r["class"], r["checkpoint"]): r["dice"] for r in rows
           if r["method"] == "registration-only"}
    assert all(reg[(d, s, c, "best")] == reg[(d, s, c, "last")] for d, s, c, _ in reg)


def _mean_dice(rows, method: str, subset: str, checkpoint: str) -> dict[str, float]:
    return {r["draw"]: float(r["dice"]) for r in rows if (r["method"], r["subset"], r["checkpoint"], r["class"])
            == (method, subset, checkpoint, "mean")}


def test_comparisons_csv_compares_every_other_method_with_the_control(grid):
    _, out = grid
    rows = rows_of(out / "comparisons.csv")
    assert tuple(rows[0]) == COMPARISON_COLUMNS
    assert len(rows) == 3 * 2 * 2   # (supervised, cctr, registration-only) x subsets x checkpoint rules
    assert {(r["method"], r["backend"]) for r in rows} == set(GROUPS) - {("ct", "")}
    assert {(r["subset"], r["checkpoint"]) for r in rows} == {(s, c) for s in ("test", "val") for c in ("best", "last")}
    assert {r["control"] for r in rows} == {"ct"} and {r["labeled"] for r in rows} == {"1"}
    assert {(r["draws"], r["seeds"], r["cases"]) for r in rows} == {("2", "1", "2")}
    results = rows_of(out / "results.csv")
    for r in rows:
        low, diff, high = float(r["low"]), float(r["difference"]), float(r["high"])
        assert low <= diff <= high
        assert r["verdict"] == ("better" if low > 0 else "worse" if high < 0 else "not distinguishable")
        # the paired mean difference: every draw has as many volumes, so it is the mean of the
        # runs' differences of their mean over volumes
        mine = _mean_dice(results, r["method"], r["subset"], r["checkpoint"])
        control = _mean_dice(results, "ct", r["subset"], r["checkpoint"])
        assert diff == pytest.approx(np.mean([mine[d] - control[d] for d in ("0", "1")]), abs=1e-12)


def test_results_md_has_the_test_and_validation_tables_against_the_control(grid):
    data, out = grid
    table = (out / "results.md").read_text()
    assert f"Data: `{data.resolve()}`; 2 test and 2 validation volume(s)." in table
    lines = table.splitlines()
    head = "| method | backend | draws x seeds | best | best vs ct | verdict | last | last vs ct | verdict |"
    for title in ("## Test volumes, labeled set 1", "## Validation volumes (where choices are made), labeled set 1"):
        at = lines.index(title)
        assert lines[at + 2] == head
        body = lines[at + 4:at + 8]
        assert [row.split(" | ")[0] for row in body] == ["| supervised", "| ct", "| cctr", "| registration-only"]
        assert all(" | 2 x 1 | " in row for row in body)
        assert body[1].count("| control |") == 2   # the control's row, under both rules
        for row in (body[0], body[2], body[3]):
            assert "control" not in row
            assert sum(row.count(v) for v in ("| better |", "| worse |", "| not distinguishable |")) == 2
    assert "## Dice per class, test volumes, best checkpoint, labeled set 1" in table
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")


def test_trained_runs_keep_their_test_predictions_by_both_checkpoints(grid):
    data, out = grid
    test_cases = {f"{p}_{f}.nii.gz" for p in open_dataset(data).default_split.test for f in ("ED", "ES")}
    for method, tag in TRAINED:
        for draw in (0, 1):
            run = out / f"runs/{method}/{tag}/labeled-1/draw-{draw}/seed-0"
            for folder, checkpoint in (("predictions", "best.pt"), ("predictions-last", "last.pt")):
                files = {p.name for p in (run / folder).iterdir()}
                assert files == test_cases | {"predictions.json"}, (run, folder)   # test volumes only, not val
                info = json.loads((run / folder / "predictions.json").read_text())
                assert Path(info["checkpoint"]) == run / checkpoint
    assert not (out / "runs/registration-only/identity/labeled-1/draw-0/seed-0/predictions").exists()


def test_a_rerun_skips_finished_runs_and_refuses_other_options(grid, monkeypatch):
    data, out = grid
    before = {name: (out / name).read_text() for name in ("results.csv", "comparisons.csv", "results.md")}
    for name in ("train_segmentation", "propagate_and_score", "predict_cases"):
        monkeypatch.setattr(bench, name, refuse)
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *TINY]) == 0
    assert {name: (out / name).read_text() for name in before} == before
    changed = [a if a != "iterations=2" else "iterations=3" for a in TINY]
    assert main(["benchmark", "--data", str(data), "--out", str(out), "--no-progress", *GRID, *changed]) == 2


def test_a_moved_benchmark_folder_keeps_its_finished_runs(grid, tmp_path, monkeypatch):
    data, out = grid
    moved = tmp_path / "elsewhere" / "bench"
    shutil.copytree(out, moved)
    for name in ("train_segmentation", "propagate_and_score", "predict_cases"):
        monkeypatch.setattr(bench, name, refuse)
    assert main(["benchmark", "--data", str(data), "--out", str(moved), "--no-progress", *GRID, *TINY]) == 0
    assert (moved / "results.csv").read_text() == (out / "results.csv").read_text()


def test_tabulate_joins_grids_run_by_separate_commands_and_takes_another_control(grid, tmp_path, capsys):
    data, out = grid
    joined = tmp_path / "joined"
    shutil.copytree(out / "runs", joined / "runs")
    # a second process's share of seeds: seed 1 alone, on the same draws
    second = ["--methods", "ct", "--labeled", "1", "--draws", "2", "--seeds", "1", "--first-seed", "1",
              "--threads", "0"]
    assert main(["benchmark", "--data", str(data), "--out", str(joined), "--no-progress", *second, *TINY]) == 0
    ct = joined / "runs" / "ct" / "none" / "labeled-1"
    assert sorted(str(p.relative_to(ct)) for p in ct.glob("draw-*/seed-*")) == [
        "draw-0/seed-0", "draw-0/seed-1", "draw-1/seed-0", "draw-1/seed-1"]
    capsys.readouterr()

    assert main(["benchmark", "--out", str(joined), "--tabulate"]) == 0
    assert "10 run(s)" in capsys.readouterr().out
    table = (joined / "results.md").read_text()
    assert f"Data: `{data.resolve()}`" in table   # where the runs ran, not joined/data
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    test_rows = rows[2:6]
    assert [row.split(" | ")[0].lstrip("| ") for row in test_rows] == ["supervised", "ct", "cctr", "registration-only"]
    assert " | 2 x 2 | " in test_rows[1] and " | 2 x 1 | " in test_rows[0]
    assert len(rows_of(joined / "results.csv")) == (4 * 2 + 2) * 2 * 2 * 4
    # the other methods ran seed 0 only: the comparisons pair on it
    assert {(r["draws"], r["seeds"]) for r in rows_of(joined / "comparisons.csv")} == {("2", "1")}

    assert main(["benchmark", "--out", str(joined), "--tabulate", "--control", "supervised"]) == 0
    compared = rows_of(joined / "comparisons.csv")
    assert {r["control"] for r in compared} == {"supervised"}
    assert {r["method"] for r in compared} == {"ct", "cctr", "registration-only"}
    table = (joined / "results.md").read_text()
    assert "best vs supervised" in table and "best vs ct" not in table
    assert "| supervised | - | 2 x 1 | " in table and "| control |" in table

    edited = ct / "draw-1" / "seed-1" / "result.json"
    edited.write_text(edited.read_text().replace('"patient', '"other'))
    assert main(["benchmark", "--out", str(joined), "--tabulate"]) == 2
    assert "scored on different volumes or classes" in capsys.readouterr().err
    assert main(["benchmark", "--out", str(tmp_path / "empty"), "--tabulate"]) == 2
    assert main(["benchmark", "--data", str(data), "--out", str(tmp_path / "bad"), "--first-seed", "-1", *TINY]) == 2
    assert "--first-seed >= 0" in capsys.readouterr().err


def test_data_inside_the_benchmark_folder_is_named_relative_to_it(grid):
    data, out = grid
    results = collect_results(out)
    inside = results_markdown(results, out / "data", relative_to=out)
    assert "Data: `data`;" in inside   # a results.md copied with its folder names no local path
    assert f"Data: `{data}`;" in results_markdown(results, data, relative_to=out)


def test_rows_never_claim_to_be_a_control_that_did_not_run(grid, tmp_path):
    _, out = grid
    shutil.copytree(out / "runs", tmp_path / "runs")
    assert main(["benchmark", "--out", str(tmp_path), "--tabulate", "--control", "cctr+"]) == 0
    assert rows_of(tmp_path / "comparisons.csv") == []   # nothing to compare with
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows and not any("| control |" in row for row in rows), table


def test_a_later_grid_on_the_same_folder_keeps_the_recorded_draws(grid, tmp_path, capsys):
    data, out = grid
    shutil.copy(out / "split.json", tmp_path / "split.json")
    recorded = load_split(out / "split.json").labeled_sets
    assert "1~1" in recorded   # the grid's second draw
    # the far end of the gap: every label, one draw; the earlier draws stay on record
    later = ["--methods", "supervised", "--labeled", "all", "--draws", "1", "--seeds", "1", "--threads", "0"]
    assert main(["benchmark", "--data", str(data), "--out", str(tmp_path), "--no-progress", *later, *TINY]) == 0
    assert load_split(tmp_path / "split.json").labeled_sets == recorded
    # a record that names another labeled patient under a set's name is another benchmark
    other = json.loads((out / "split.json").read_text())
    other["labeled_sets"]["1~1"] = [p for p in other["train"] if p not in other["labeled_sets"]["1~1"]][:1]
    (tmp_path / "split.json").write_text(json.dumps(other))
    capsys.readouterr()
    drawn = ["--methods", "supervised", "--labeled", "1", "--draws", "2", "--seeds", "1", "--threads", "0"]
    assert main(["benchmark", "--data", str(data), "--out", str(tmp_path), "--no-progress", *drawn, *TINY]) == 2
    err = capsys.readouterr().err
    assert "labeled set '1~1' is recorded as" in err and "use another --out" in err


def test_a_marker_of_an_older_version_is_refused_by_name(grid, tmp_path, capsys):
    _, out = grid
    shutil.copytree(out / "runs", tmp_path / "runs")
    marker = tmp_path / "runs" / "ct" / "none" / "labeled-1" / "draw-0" / "seed-0" / "result.json"
    data = json.loads(marker.read_text())
    del data["run"]["draw"]
    data["scores"] = data["scores"]["test"]["best"]   # scores of the test volumes only, as before
    marker.write_text(json.dumps(data))
    assert main(["benchmark", "--out", str(tmp_path), "--tabulate"]) == 2
    err = capsys.readouterr().err
    assert str(marker) in err and "not a benchmark result of this version" in err


def test_the_grid_is_refused_when_the_draws_or_the_split_cannot_give_it(grid, tmp_path, capsys):
    data, _ = grid
    base = ["benchmark", "--data", str(data), "--no-progress", "--methods", "ct", "--seeds", "1", "--threads", "0",
            *TINY]
    assert main([*base, "--out", str(tmp_path / "a"), "--draws", "0"]) == 2
    assert "--draws must be >= 1" in capsys.readouterr().err
    # 2 training patients: 2 distinct labeled sets of one
    assert main([*base, "--out", str(tmp_path / "b"), "--draws", "3"]) == 2
    assert "fewer draws" in capsys.readouterr().err
    assert not list((tmp_path / "b").rglob("result.json"))
    own = open_dataset(data).default_split
    no_val = tmp_path / "split.json"
    no_val.write_text(json.dumps({"train": list(own.train), "val": [], "test": [*own.test, *own.val],
                                  "labeled_sets": {"1": list(own.labeled("1"))}}))
    assert main([*base, "--out", str(tmp_path / "c"), "--draws", "1", "--split", str(no_val)]) == 2
    assert "no val patients" in capsys.readouterr().err


def test_inspect_compare_pairs_two_arms_and_refuses_a_folder_of_several_methods(grid, tmp_path, capsys):
    _, out = grid
    assert main(["inspect", "compare", f"ct={out}:ct", f"cctr={out}:cctr", "--out", str(tmp_path / "arms.md")]) == 0
    text = capsys.readouterr().out
    assert (tmp_path / "arms.md").read_text() == text
    lines = text.splitlines()
    assert lines[0].startswith("| arm | draws x seeds | val, best | val vs first | verdict | test, best |")
    control, arm = lines[2], lines[3]
    assert control.startswith("| ct | 2 x 1 | ") and control.count("| control |") == 3
    assert arm.startswith("| cctr | 2 x 1 | ") and "control" not in arm
    assert sum(arm.count(v) for v in ("| better |", "| worse |", "| not distinguishable |")) == 3
    # the paired row: cctr minus ct on the validation volumes by best.pt, as results.csv gives it
    results = rows_of(out / "results.csv")
    mine, first = _mean_dice(results, "cctr", "val", "best"), _mean_dice(results, "ct", "val", "best")
    assert f"| {np.mean([mine[d] - first[d] for d in ('0', '1')]):+.4f} [" in arm

    assert main(["inspect", "compare", f"all={out}", f"ct={out}:ct"]) == 2
    err = capsys.readouterr().err
    assert "span 4 method/backend groups" in err and "NAME=DIR:METHOD" in err
    assert main(["inspect", "compare", f"ct={out}:ct"]) == 2   # a control alone compares nothing
    assert main(["inspect", "compare", f"ct={out}:ct", f"x={out}:cctr+"]) == 2
    assert "no finished run" in capsys.readouterr().err


NAMES = ("background", "A", "B")


def result(method: str, draw: int, values: dict[str, float], seed: int = 0) -> RunResult:
    """A run whose every volume scores ``values[case]`` in both classes, everywhere."""
    per_case = {case: {1: ClassScore(v, 2.0, 1.0), 2: ClassScore(v, 4.0, 1.0)} for case, v in values.items()}
    scores = {subset: {rule: per_case for rule in ("best", "last")} for subset in ("val", "test")}
    return RunResult(Run(method, "", "1", draw, seed), NAMES, scores)


def test_table_cells_are_mean_and_sample_std_over_runs_with_the_paired_difference():
    results = [
        result("supervised", 0, {"v1": 0.4, "v2": 0.6}),
        result("ct", 0, {"v1": 0.5, "v2": 0.7}), result("ct", 1, {"v1": 0.6, "v2": 0.8}),
        result("cct", 0, {"v1": 0.6, "v2": 0.8}), result("cct", 1, {"v1": 0.7, "v2": 0.9}),
    ]
    table = results_markdown(results, Path("d"))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()
            if line.startswith("| ") and "draws x seeds" not in line and "---" not in line}
    assert table.count("| ct | - | 2 x 1 | 0.6500 ± 0.0707 | control |  | 0.6500 ± 0.0707 | control |  |") == 2
    # cct: the control + 0.1 on every volume: an interval collapsed on +0.1, better
    same = "+0.1000 [+0.1000, +0.1000] | better"
    assert table.count(f"| cct | - | 2 x 1 | 0.7500 ± 0.0707 | {same} | 0.7500 ± 0.0707 | {same} |") == 2
    # one run: no sample std; paired on draw 0, the one both ran
    worse = "-0.1000 [-0.1000, -0.1000] | worse"
    assert table.count(f"| supervised | - | 1 x 1 | 0.5000 | {worse} | 0.5000 | {worse} |") == 2
    assert rows["cct"] == "| cct | - | 0.7500 ± 0.0707 | 0.7500 ± 0.0707 | 3.00 ± 0.00 |"   # per class, last table
    found = comparisons(results, "ct")
    assert {(c.group[0], c.subset, c.checkpoint) for c in found} == {
        (m, s, r) for m in ("supervised", "cct") for s in ("test", "val") for r in ("best", "last")}
    assert all(c.control == ("ct", "", "1") for c in found)
    csv_rows = list(csv.DictReader(results_csv(results).splitlines()))
    assert len(csv_rows) == 5 * 2 * 2 * 3   # runs x subsets x rules x (2 classes + mean)
    one = next(r for r in csv_rows if (r["method"], r["draw"], r["subset"], r["checkpoint"], r["class"])
               == ("ct", "1", "val", "last", "mean"))
    assert float(one["dice"]) == pytest.approx(0.7) and float(one["hd95_mm"]) == pytest.approx(3.0)
    assert one["cases"] == "2"


def test_a_generated_phantom_has_the_asked_training_patients_kind_and_difficulty(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_command, "TEST_PATIENTS", {"cardiac": 2, "abdomen": 2})   # 24 and 12: too slow here
    data = bench_command.generated_phantom(tmp_path, "cardiac", 2, 3, progress=False)
    assert data == tmp_path / "data"
    dataset = open_dataset(data)
    split = dataset.default_split
    assert (len(split.train), len(split.val), len(split.test)) == (3, bench_command.VALIDATION_PATIENTS, 2)
    assert len(dataset.patient_ids) == 3 + 4 + 2
    first = next(ref for ref in dataset.refs if ref.case_id.endswith("_ED")).load()
    expected, _ = make_patient(0, 1, PhantomConfig.at_level(2), patients=9)
    assert first.case_id == expected.case_id and np.array_equal(first.label, expected.label)
    # there already: kept as it is
    stamp = (data / "dataset.json").stat().st_mtime_ns
    assert bench_command.generated_phantom(tmp_path, "cardiac", 2, 3, progress=False) == data
    assert (data / "dataset.json").stat().st_mtime_ns == stamp


def test_inspect_diagnostics_reads_the_runs_of_every_draw(grid, capsys):
    _, out = grid
    assert main(["inspect", "diagnostics", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for method, tag in TRAINED:
        # the group's row, then one row per run: 2 draws x 1 seed
        assert sum(line.startswith(f"| {method} | {tag} | ") for line in lines) == 3, (method, lines)
