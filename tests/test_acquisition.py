"""``cctr benchmark --acquire``, the benchmark of the choice, at tiny scale: each base run's
choices by every rule (nested over k), the split's acquired labeled sets, one retrained run per
rule and k with the base run's options, the paired comparisons of the rules, the base runs' QC
on the test scans, and a re-run that redoes nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import cctr.joint.app.acquisition as acquisition
from cctr.joint.app.acquisition import RANDOM_SALT, acquired_labeled, acquired_set
from cctr.joint.app.cli import main
from cctr.joint.config import JointConfig
from cctr.joint.suggest import Candidate, random_choice
from cctr.seg.config import from_dict
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import load_split
from cctr.seg.run_identity import config_changes

TINY = ["--set", "iterations=2", "--set", "val_every=2", "--set", "image_size=[32,32]", "--set", "labeled_batch=2",
        "--set", "unlabeled_batch=2", "--set", "student_a={kind: unet, widths: [4, 8]}",
        "--set", "student_b={kind: unet, widths: [4, 8]}", "--set", "embedding_dim=8"]
COMMAND = ["--methods", "cctr", "--backends", "identity", "--labeled", "1", "--draws", "2", "--seeds", "1",
           "--threads", "0", "--acquire", "1,2", "--no-progress", *TINY]
RULES = ("suggest", "random", "farthest")


@pytest.fixture(scope="module")
def loop(tmp_path_factory) -> tuple[Path, Path]:
    """A 6-patient phantom (4 training patients: 2 draws of one labeled patient, a pool of 3) and
    the loop on it: 2 base runs, each followed by 3 rules x k in (1, 2)."""
    root = tmp_path_factory.mktemp("acquire")
    data = write_phantom(root / "data", 6, seed=0, cfg=PhantomConfig(matrix=(40, 48), slices=(4, 6)), workers=1)
    out = root / "out"
    assert main(["benchmark", "--data", str(data), "--out", str(out), *COMMAND]) == 0
    return data, out


def marker(out: Path, draw: int) -> dict:
    return json.loads((out / f"acquire/cctr/identity/labeled-1/draw-{draw}/seed-0/choices.json").read_text())


def test_names_of_the_acquired_sets_and_runs():
    assert acquired_labeled("1", "suggest", 2) == "1+suggest2"
    assert acquired_set("1~1", "random", 1, 3) == "1~1+random1@s3"


def test_every_rule_chooses_patients_of_the_pool_and_random_is_seeded_by_draw_and_seed(loop):
    data, out = loop
    split = load_split(out / "split.json")
    for draw, draw_set in ((0, "1"), (1, "1~1")):
        m = marker(out, draw)
        assert m["labeled_set"] == draw_set and m["backend"] == "identity"
        pool = split.unlabeled(draw_set)
        for rule in RULES:
            chosen = m["choices"][rule]
            assert len(chosen) == 2 and len(set(chosen)) == 2 and set(chosen) <= set(pool)
        # the pool's patients in dataset order, as the run's data loads them
        dummy = [Candidate(p, (), None, None, None, None, None) for p in open_dataset(data).patient_ids if p in pool]
        assert m["choices"]["random"] == random_choice(dummy, 2, (RANDOM_SALT, draw, 0))
        # the suggest and farthest rules left their cctr suggest files
        for rule in ("suggest", "farthest"):
            folder = out / f"acquire/cctr/identity/labeled-1/draw-{draw}/seed-0/{rule}"
            with open(folder / "suggest.csv", newline="") as f:
                assert [r["patient"] for r in csv.DictReader(f) if r["pick"]] == m["choices"][rule]
        assert set(m["test_qc"]) >= {"spearman", "flag_precision", "lowest_precision"}
        assert m["test_qc"]["scans"] == 2 * len(split.test)


def test_the_split_holds_each_acquired_set_and_each_run_trains_on_it_with_the_base_options(loop):
    data, out = loop
    split = load_split(out / "split.json")
    for draw, draw_set in ((0, "1"), (1, "1~1")):
        m = marker(out, draw)
        base = json.loads((out / f"runs/cctr/identity/labeled-1/draw-{draw}/seed-0/result.json").read_text())
        for rule in RULES:
            for k in (1, 2):
                name = acquired_set(draw_set, rule, k, 0)
                assert split.labeled(name) == (*split.labeled(draw_set), *m["choices"][rule][:k])
                result = json.loads((out / f"runs/cctr/identity/labeled-1+{rule}{k}/draw-{draw}/seed-0/result.json")
                                    .read_text())
                assert result["run"] == {"method": "cctr", "backend": "identity", "labeled": f"1+{rule}{k}",
                                         "draw": draw, "seed": 0}
                cfg = from_dict(result["config"], JointConfig())
                assert cfg.labeled == name
                # only the labeled set (and the folder) differ from the base run's options
                assert config_changes(from_dict(base["config"], JointConfig()), cfg) == ["labeled"]
                assert set(result["scores"]["test"]["best"]) == set(base["scores"]["test"]["best"])


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _test_dice(out: Path, labeled: str, draw: int) -> dict[str, float]:
    result = json.loads((out / f"runs/cctr/identity/labeled-{labeled}/draw-{draw}/seed-0/result.json").read_text())
    return {case: float(np.mean([s["dice"] for s in per.values()]))
            for case, per in result["scores"]["test"]["best"].items()}


def test_the_rules_are_compared_paired_over_draws_seeds_and_volumes(loop):
    _, out = loop
    rows = rows_of(out / "acquisition.csv")
    pairs = {(r["k"], r["rule"], r["against"]) for r in rows}
    assert pairs == {(k, a, b) for k in ("1", "2") for a, b in acquisition.PAIRS}
    for k in (1, 2):
        row = next(r for r in rows if (r["k"], r["rule"], r["against"], r["subset"], r["checkpoint"])
                   == (str(k), "suggest", "random", "test", "best"))
        assert (row["draws"], row["seeds"]) == ("2", "1")
        low, mean, high = float(row["low"]), float(row["difference"]), float(row["high"])
        expected = np.mean([np.mean([s - r for s, r in zip(_test_dice(out, f"1+suggest{k}", d).values(),
                                                            _test_dice(out, f"1+random{k}", d).values())])
                            for d in (0, 1)])
        assert mean == pytest.approx(expected, abs=1e-12) and low <= mean <= high
        base = next(r for r in rows if (r["k"], r["rule"], r["against"], r["subset"], r["checkpoint"])
                    == (str(k), "suggest", "none", "test", "best"))
        assert float(base["difference"]) == pytest.approx(np.mean(
            [np.mean(list(_test_dice(out, f"1+suggest{k}", d).values())) - np.mean(list(_test_dice(out, "1", d).values()))
             for d in (0, 1)]), abs=1e-12)
    text = (out / "acquisition.md").read_text()
    assert "| cctr | 1 | 1 | suggest | random |" in text and "| cctr | 1 | 2 | farthest | none |" in text
    assert "## Quality control on the test scans of the base runs" in text
    assert "## The suggestion's check on the validation scans" in text
    # the standard tables still list every run, each acquired set apart
    assert "## Test volumes, labeled set 1+suggest1" in (out / "results.md").read_text()


def test_a_rerun_redoes_nothing_and_tabulate_rewrites_the_tables(loop, monkeypatch):
    data, out = loop

    def refuse(*args, **kwargs):
        raise AssertionError("a finished choice or run ran again")

    monkeypatch.setattr(acquisition, "execute_run", refuse)
    monkeypatch.setattr(acquisition, "gather", refuse)
    before = (out / "acquisition.csv").read_text()
    assert main(["benchmark", "--data", str(data), "--out", str(out), *COMMAND]) == 0
    (out / "acquisition.md").unlink()
    assert main(["benchmark", "--out", str(out), "--tabulate", "--acquire", "1,2"]) == 0
    assert (out / "acquisition.csv").read_text() == before and (out / "acquisition.md").is_file()


def test_bad_acquisition_options_stop_before_any_work(tmp_path, capsys):
    for extra, message in ((["--acquire", "1", "--rules", "smart"], "unknown rule(s) ['smart']"),
                           (["--acquire", "0"], "patient counts >= 1"),
                           (["--acquire", "1", "--weights", "1,1"], "three numbers")):
        assert main(["benchmark", "--out", str(tmp_path / "b"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
