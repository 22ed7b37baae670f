"""The benchmark of the choice (``cctr benchmark --acquire 1,2``): from each finished run of a
labeled draw, add the patients that a rule chooses, retrain at the same budget, and compare the
rules' test Dice, paired over draws x seeds x test scans (:mod:`joint.app.paired`).

Rules (:data:`RULES`): ``suggest`` (``cctr suggest``'s score and greedy choice, from the run's
students and registration), ``random`` (uniform, seeded by the draw and the seed) and
``farthest`` (the distance under registration alone, farthest first). Each chooses ``max(K)``
patients once; the first ``k`` of them are its choice of ``k`` (every rule's choices nest).

For the base run ``runs/<method>/<backend>/labeled-<L>/draw-<d>/seed-<s>``:

- ``acquire/<method>/<backend>/labeled-<L>/draw-<d>/seed-<s>/``: ``suggest/`` and
  ``farthest/`` (the files of ``cctr suggest``), ``qc.csv`` (the base run's quality control on
  the test scans, with their true Dice) and, written last, the marker ``choices.json`` (each
  rule's patients, the validation check, the QC check). A folder with a marker is never redone;
- the labeled set ``<draw's set>+<rule><k>@s<seed>`` (the draw's patients and the first ``k``
  of the rule's), recorded in ``OUT/split.json``, and its run
  ``runs/<method>/<backend>/labeled-<L>+<rule><k>/draw-<d>/seed-<s>``: the base run's options
  and registration net, only the labeled set differs; a run with a ``result.json`` is skipped.

``acquisition.md`` and ``acquisition.csv`` hold the comparisons (each rule against ``random``
and against the base run, ``suggest`` against ``farthest``), the quality-control check on the
test scans of every base run, and the suggestion's validation check.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cctr.joint.app.benchmark import (DrawSetup, Run, RunResult, backend_tag, execute_run, read_result,
                                      run_config)
from cctr.joint.app.comparison import cells
from cctr.joint.app.paired import PairedDifference, paired_difference, sample_mean_std
from cctr.joint.app.suggestion import FALLBACK_BACKEND, Suggestion, gather, rank, write_suggestion
from cctr.joint.config import JointConfig
from cctr.joint.methods import REGISTRATION_ONLY
from cctr.joint.app.quality import scored_qc
from cctr.joint.qc import QCCheck, QCConfig, check_qc, write_qc_csv
from cctr.joint.suggest import COMPONENTS, FARTHEST, SuggestConfig, random_choice
from cctr.reg.backends import load_backend
from cctr.seg.atomic import write_json, write_text_atomic
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.inference import load_students

RULES = ("suggest", "random", "farthest")
CHOICES = "choices.json"
# a fixed salt so the random rule's draws differ from every other seeded draw of the benchmark
RANDOM_SALT = 7919


@dataclass(frozen=True)
class Acquisition:
    """What the loop adds: ``ks`` patients by each of ``rules``, ``suggest`` with ``weights``."""

    ks: tuple[int, ...]
    rules: tuple[str, ...] = RULES
    suggest: SuggestConfig = SuggestConfig()

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in RULES]
        if unknown or not self.rules:
            raise ValueError(f"--rules: unknown rule(s) {unknown}; known: {list(RULES)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--acquire: give patient counts >= 1, e.g. 1,2 (got {list(self.ks)})")


def acquired_labeled(labeled: str, rule: str, k: int) -> str:
    """The benchmark's name of the runs that added ``k`` patients by ``rule`` to set ``labeled``."""
    return f"{labeled}+{rule}{k}"


def acquired_set(draw_set: str, rule: str, k: int, seed: int) -> str:
    """The split's labeled set of one such run (the choice depends on the base run's seed)."""
    return f"{draw_set}+{rule}{k}@s{seed}"


def acquire_folder(out: Path, run: Run) -> Path:
    return (Path(out) / "acquire" / run.method / backend_tag(run.backend) / f"labeled-{run.labeled}"
            / f"draw-{run.draw}" / f"seed-{run.seed}")


def _test_qc(cfg: JointConfig, checkpoint: Path, cases: Sequence[Case], atlases: Sequence[Case], spec: str,
             setup: DrawSetup, folder: Path) -> QCCheck:
    """The base run's quality control on the test scans against their true Dice (``qc.csv``,
    ``true_dice.json``)."""
    backend = load_backend(spec, setup.frontend, cfg.device)
    qc, truth = scored_qc(load_students(checkpoint), cases, atlases, backend, replace(cfg.oracle, backend=spec),
                          progress=False)
    write_qc_csv(folder / "qc.csv", qc)
    write_json(folder / "true_dice.json", truth)
    return check_qc(qc, truth)


def choose_for_run(run: Run, cfg: JointConfig, setup: DrawSetup, acq: Acquisition, dataset: Dataset, split: Split,
                   test_cases: Sequence[Case], out: Path, progress: bool = True) -> dict:
    """The base run's choices by every rule (read from its marker, else computed and written)."""
    folder = acquire_folder(out, run)
    marker = folder / CHOICES
    if marker.is_file():
        try:
            data = json.loads(marker.read_text())
            if all(len(data["choices"][r]) >= max(acq.ks) for r in acq.rules):
                return data
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CaseError(f"{marker}: not a choices file ({type(exc).__name__}: {exc}); delete it to redo") from exc
    checkpoint = Path(cfg.out_dir) / ("best.pt" if (Path(cfg.out_dir) / "best.pt").is_file() else "last.pt")
    trained = load_students(checkpoint)
    spec = cfg.oracle.backend or FALLBACK_BACKEND
    g = gather(cfg, dataset, split, spec, trained, setup.frontend, progress)
    kmax = max(acq.ks)
    found: dict[str, Suggestion] = {}
    choices: dict[str, list[str]] = {}
    for rule in acq.rules:
        if rule == "random":
            choices[rule] = random_choice(g.pool, kmax, (RANDOM_SALT, run.draw, run.seed))
            continue
        found[rule] = rank(g, replace(acq.suggest if rule == "suggest" else FARTHEST, k=kmax))
        write_suggestion(folder / rule, found[rule], Path(cfg.out_dir), dataset, trained)
        choices[rule] = found[rule].chosen
    atlases = [ref.load() for ref in dataset.of_patients(split.labeled(cfg.labeled))]
    qc = _test_qc(cfg, checkpoint, test_cases, atlases, spec, setup, folder)
    check = found["suggest"].check if "suggest" in found else None
    data = {"labeled_set": cfg.labeled, "backend": spec, "choices": choices,
            "validation": None if check is None else {"scans": check.scans, "with_error": dict(check.with_error),
                                                      "with_dice": dict(check.with_dice)},
            "test_qc": qc.__dict__}
    write_json(marker, data)
    return data


def acquisition_runs(base: Sequence[Run], acq: Acquisition) -> list[Run]:
    """Every run the loop trains: per base run, rule and k."""
    return [Run(r.method, r.backend, acquired_labeled(r.labeled, rule, k), r.draw, r.seed)
            for k in acq.ks for r in base for rule in acq.rules]


def run_acquisition(base: Sequence[Run], setups: Mapping[tuple[str, int], DrawSetup], acq: Acquisition,
                    dataset: Dataset, split: Split, out: Path, progress: bool = True) -> tuple[Split, list[RunResult]]:
    """Choose for every finished base run, extend the split, and train and score every
    acquisition run (skipping finished ones); returns the extended split and the results."""
    base = [r for r in base if r.method != REGISTRATION_ONLY]   # it trains no students to ask
    if not base:
        raise ValueError("--acquire needs a trained method among --methods (e.g. cctr+)")
    test_cases = [ref.load() for ref in dataset.of_patients(split.test)]
    sets = dict(split.labeled_sets)
    configs: dict[Run, tuple[JointConfig, DrawSetup]] = {}
    for run in base:
        setup = setups[(run.labeled, run.draw)]
        cfg = run_config(setup, run, Path(out) / run.folder)
        data = choose_for_run(run, cfg, setup, acq, dataset, split, test_cases, out, progress)
        for rule in acq.rules:
            for k in acq.ks:
                name = acquired_set(setup.labeled_set, rule, k, run.seed)
                sets[name] = (*split.labeled(setup.labeled_set), *data["choices"][rule][:k])
                added = Run(run.method, run.backend, acquired_labeled(run.labeled, rule, k), run.draw, run.seed)
                # the base run's options and registration net: only the labeled set differs
                configs[added] = (run_config(replace(setup, labeled_set=name), added, Path(out) / added.folder), setup)
    split = replace(split, labeled_sets=sets)
    write_json(Path(out) / "split.json", split.to_dict())
    cases = {"val": [ref.load() for ref in dataset.of_patients(split.val)], "test": test_cases}
    results = []
    for run, (cfg, setup) in configs.items():
        result = read_result(Path(cfg.out_dir), run, cfg)
        if result is None:
            result = execute_run(run, cfg, dataset, split, cases, setup.frontend, progress)
        results.append(result)
    return split, results


# -- tables ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleComparison:
    method: str
    backend: str
    labeled: str
    k: int
    arm: str          # a rule, or 'none' for the base runs
    against: str
    subset: str
    checkpoint: str
    difference: PairedDifference


COLUMNS = ("method", "backend", "labeled", "k", "rule", "against", "subset", "checkpoint", "difference", "low",
           "high", "verdict", "draws", "seeds", "cases")
PAIRS = (("suggest", "random"), ("suggest", "farthest"), ("farthest", "random"), ("suggest", "none"),
         ("random", "none"), ("farthest", "none"))


def rule_comparisons(results: Sequence[RunResult], acq: Acquisition) -> list[RuleComparison]:
    """Every pair of :data:`PAIRS` both of whose arms ran, per (method, backend, labeled set)
    of the base runs, k, subset and checkpoint rule."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.run.method, r.run.backend, r.run.labeled), []).append(r)
    out = []
    for (method, backend, labeled), runs in groups.items():
        if "+" in labeled:
            continue
        for k in acq.ks:
            arms = {"none": runs, **{rule: groups.get((method, backend, acquired_labeled(labeled, rule, k)), [])
                                     for rule in acq.rules}}
            for (arm, against), subset, checkpoint in product(PAIRS, ("test", "val"), ("best", "last")):
                if not arms.get(arm) or not arms.get(against):
                    continue
                try:
                    d = paired_difference(cells(arms[arm], subset, checkpoint), cells(arms[against], subset, checkpoint))
                except ValueError:
                    continue
                out.append(RuleComparison(method, backend, labeled, k, arm, against, subset, checkpoint, d))
    return out


def comparisons_csv(found: Sequence[RuleComparison]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for c in found:
        writer.writerow([c.method, c.backend, c.labeled, c.k, c.arm, c.against, c.subset, c.checkpoint,
                         *c.difference.csv_cells()])
    return buf.getvalue()


def _markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "acquire").rglob(CHOICES))]


def _mean_line(values: Sequence[float]) -> str:
    mean, std = sample_mean_std([v for v in values if v is not None])
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" + ("" if np.isnan(std) else f" ± {std:.3f}")


def acquisition_markdown(found: Sequence[RuleComparison], markers: Sequence[dict]) -> str:
    lines = ["# Which scan to label next: the benchmark of the choice", "",
             ("Each row: the Dice (student A, mean over foreground classes) of the runs that added k patients by "
              "one rule minus the runs of the other arm (another rule, or `none`: the base runs, nothing added), "
              "paired over labeled draws x seeds x volumes, with the 95 % interval of the hierarchical bootstrap "
              "and its verdict. `best`: the checkpoint of the best validation Dice, `last`: the last one."), "",
             "| method | labeled | k | rule | minus | test, best | verdict | test, last | verdict | val, best | "
             "verdict | draws x seeds |",
             "| --- | --- | ---: | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows: dict[tuple, dict[tuple[str, str], RuleComparison]] = {}
    for c in found:
        rows.setdefault((c.method, c.labeled, c.k, c.arm, c.against), {})[(c.subset, c.checkpoint)] = c
    for (method, labeled, k, arm, against), by in rows.items():
        cells_ = []
        for key in (("test", "best"), ("test", "last"), ("val", "best")):
            d = by[key].difference if key in by else None
            cells_ += ([f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]", d.verdict]
                       if d is not None else ["n/a", ""])
        any_d = next(iter(by.values())).difference
        lines.append(f"| {method} | {labeled} | {k} | {arm} | {against} | " + " | ".join(cells_)
                     + f" | {any_d.draws} x {any_d.seeds} |")
    qcs = [m["test_qc"] for m in markers if m.get("test_qc")]
    lines += ["", "## Quality control on the test scans of the base runs", "",
              f"Over {len(qcs)} base run(s), mean ± sample std over runs. Flag: estimated Dice below "
              f"{QCConfig().threshold:g} or among the lowest {100 * QCConfig().fraction:g} % of the run's test scans; "
              "worst: the lowest 10 % by true Dice.", "",
              "| Spearman | flag precision | flag recall | lowest-estimate precision | flagged per run |",
              "| ---: | ---: | ---: | ---: | ---: |",
              f"| {_mean_line([q['spearman'] for q in qcs])} | {_mean_line([q['flag_precision'] for q in qcs])} | "
              f"{_mean_line([q['flag_recall'] for q in qcs])} | {_mean_line([q['lowest_precision'] for q in qcs])} | "
              f"{_mean_line([q['flagged'] for q in qcs])} |"]
    vals = [m["validation"] for m in markers if m.get("validation")]
    lines += ["", "## The suggestion's check on the validation scans", "",
              f"Spearman over each base run's validation scans, mean ± sample std over {len(vals)} run(s): each "
              "component and the score against student A's error (1 - Dice), each QC signal against the Dice. "
              "This is where the score's and the estimate's form are judged.", "",
              "| signal | against | Spearman |", "| --- | --- | ---: |"]
    for key in (*COMPONENTS, "score"):
        lines.append(f"| {key} | error | {_mean_line([v['with_error'].get(key) for v in vals])} |")
    for key in ("students_dice", "atlas_fit", "estimated_dice"):
        lines.append(f"| {key} | Dice | {_mean_line([v['with_dice'].get(key) for v in vals])} |")
    return "\n".join(lines) + "\n"


def write_acquisition_tables(results: Sequence[RunResult], acq: Acquisition, out: Path) -> Path:
    """``acquisition.md`` and ``acquisition.csv`` in ``out``."""
    found = rule_comparisons(results, acq)
    write_text_atomic(Path(out) / "acquisition.csv", comparisons_csv(found))
    return write_text_atomic(Path(out) / "acquisition.md", acquisition_markdown(found, _markers(out)))
