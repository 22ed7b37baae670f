"""The comparison grid behind ``cctr benchmark``: methods x registration backends x labeled sets
x seeds on one dataset and split, every run scored in 3D on the same test volumes.

A :class:`Run` is one cell. Registration backends only matter for the registration methods
(``cctr-rsl``, ``cctr``, ``cctr-coupled`` (learned backends only), ``registration-only``); every other method runs once per labeled set
and seed. Each run lives in ``OUT/runs/<method>/<backend>/labeled-<set>/seed-<k>``:
trained (an interrupted training resumes from its ``last.pt``), its test predictions by
student A written as NIfTI (``predictions/``) and scored per volume and class (``scores.csv``), and last, written atomically, the
marker ``result.json`` (options and scores). A run with a marker is never redone; one whose
marker holds other options is refused rather than mixed into the table. Grids run by separate
commands (or processes) on the same folder are put into one table by :func:`collect_results`.

Outputs in ``OUT``: ``results.csv`` (one row per run and class, plus the class mean, each the
mean over test volumes), ``results.md`` (3D Dice and HD95 as mean ± std over seeds, per class
and overall, one row per method / backend / labeled set) and ``results.png``.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from cctr.joint.app.figures import plot_dice_bars
from cctr.joint.app.stages import predict_cases, score_cases, train_segmentation
from cctr.joint.config import JointConfig, with_backend
from cctr.joint.methods import COUPLED, METHODS, REGISTRATION_METHODS, REGISTRATION_ONLY, registration_only
from cctr.reg.placement import FrontEnd
from cctr.reg.spec import BackendSpec
from cctr.seg.config import from_dict, to_dict
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.metrics import ClassScore
from cctr.seg.atomic import write_json, write_text_atomic
from cctr.seg.report import Summary, summarize, write_scores_csv
from cctr.seg.run_identity import config_changes

RESULT_FILE = "result.json"
PREDICTIONS = "predictions"   # a run's test predictions (NIfTI), so `cctr eval` can re-score them
CSV_COLUMNS = ("method", "backend", "labeled", "seed", "class", "dice", "hd95_mm", "cases")
MEAN_ROW = "mean"   # the class column of the row holding the mean over classes


@dataclass(frozen=True)
class Run:
    method: str
    backend: str     # registration backend spec; '' for a method that uses none
    labeled: str
    seed: int

    @property
    def folder(self) -> Path:
        """Where the run lives, relative to the benchmark folder."""
        return Path("runs") / self.method / backend_tag(self.backend) / f"labeled-{self.labeled}" / f"seed-{self.seed}"


@dataclass(frozen=True)
class RunResult:
    run: Run
    class_names: tuple[str, ...]
    scores: dict[str, dict[int, ClassScore]]   # test case id -> foreground class -> score
    data: str = ""   # the dataset folder it ran on (absolute; '' in markers of older versions)

    @property
    def summary(self) -> Summary:
        return summarize(self.scores, self.class_names)


def backend_tag(spec: str) -> str:
    """A folder name for a backend spec (:attr:`reg.spec.BackendSpec.tag`); 'none' for no backend."""
    return BackendSpec.parse(spec).tag if spec else "none"


def plan_runs(methods: Sequence[str], backends: Sequence[str], labeled_sets: Sequence[str],
              seeds: Sequence[int]) -> list[Run]:
    """Every run of the grid, labeled set by labeled set and seed by seed (so a partial grid
    already compares the methods); unknown methods and a registration method without any
    backend are refused."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if not methods or not labeled_sets or not seeds:
        raise ValueError("the grid needs at least one method, one labeled set and one seed")
    if any(m in REGISTRATION_METHODS for m in methods) and not backends:
        raise ValueError(f"methods {[m for m in methods if m in REGISTRATION_METHODS]} need at least one --backends spec")
    runs = []
    for labeled in labeled_sets:
        for seed in seeds:
            for method in methods:
                for backend in (backends if method in REGISTRATION_METHODS else ("",)):
                    if method == COUPLED and not BackendSpec.parse(backend).is_learned:
                        continue  # it fine-tunes the learned net: a classical backend has none to train
                    runs.append(Run(method, backend, labeled, int(seed)))
    return runs


def run_config(base: JointConfig, run: Run, out_dir: Path) -> JointConfig:
    return replace(with_backend(base, run.backend), method=run.method, labeled=run.labeled, seed=run.seed,
                   out_dir=str(out_dir), eval_subset="test")


def _scores_to_json(scores: Mapping[str, Mapping[int, ClassScore]]) -> dict:
    return {case: {str(c): {"dice": s.dice, "hd95": s.hd95, "asd": s.asd} for c, s in per.items()}
            for case, per in scores.items()}


def _scores_from_json(data: Mapping) -> dict[str, dict[int, ClassScore]]:
    return {case: {int(c): ClassScore(**s) for c, s in per.items()} for case, per in data.items()}


def _load_result(path: Path) -> tuple[dict, RunResult]:
    """The marker at ``path``: its raw JSON and the result it holds; a file that is not one
    raises CaseError naming it."""
    try:
        data = json.loads(path.read_text())
        spec = data["run"]
        run = Run(spec["method"], spec["backend"], str(spec["labeled"]), int(spec["seed"]))
        return data, RunResult(run, tuple(data["class_names"]), _scores_from_json(data["scores"]),
                               str(data.get("data", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{path}: not a benchmark result ({type(exc).__name__}: {exc}); delete it to redo the run") from exc


def read_result(folder: Path, run: Run, cfg: JointConfig) -> Optional[RunResult]:
    """The finished result of ``run`` in ``folder``, None when the run is not finished; a
    result made with other options raises ValueError naming the options."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        return None
    data, result = _load_result(path)
    try:
        saved = from_dict(data["config"], JointConfig(), where=str(path))
    except (KeyError, TypeError) as exc:
        raise CaseError(f"{path}: not a benchmark result ({type(exc).__name__}: {exc}); delete it to redo the run") from exc
    changed = config_changes(saved, cfg)   # not the location: a moved benchmark folder carries on
    if changed:
        raise ValueError(f"{path}: this run finished with other options (changed: {changed}); "
                         "use another --out or the same options")
    return replace(result, run=run)


def execute_run(run: Run, cfg: JointConfig, dataset: Dataset, split: Split, test_cases: Sequence[Case],
                frontend: Optional[FrontEnd] = None, progress: bool = True) -> RunResult:
    """Train (or resume) and score one run, then write its marker; see the module docstring."""
    folder = Path(cfg.out_dir)
    class_names = tuple(dataset.class_names)
    if run.method == REGISTRATION_ONLY:
        scores = registration_only(cfg, dataset, split, frontend=frontend, progress=progress).scores
    else:
        checkpoint = train_segmentation(cfg, dataset, split, frontend, progress)
        predictions = predict_cases(checkpoint, test_cases, folder / PREDICTIONS, progress=progress)
        scores = score_cases(predictions, test_cases)
        write_scores_csv(folder / "scores.csv", scores, class_names)
    write_json(folder / RESULT_FILE, {
        "run": {"method": run.method, "backend": run.backend, "labeled": run.labeled, "seed": run.seed},
        "class_names": list(class_names),
        "config": to_dict(cfg),
        "scores": _scores_to_json(scores),
        "data": str(Path(dataset.root).resolve()),
    })
    return RunResult(run, class_names, scores, str(Path(dataset.root).resolve()))


def run_grid(runs: Sequence[Run], base: JointConfig, dataset: Dataset, split: Split, out_dir: Path,
             frontend: Optional[FrontEnd] = None, progress: bool = True) -> list[RunResult]:
    """Every run of ``runs``, skipping finished ones; then the CSV, markdown and plot."""
    out_dir = Path(out_dir)
    missing = [ref.case_id for ref in dataset.of_patients(split.test) if not ref.has_label]
    if not split.test:
        raise CaseError(f"{dataset.root}: the split has no test patients to score the runs on")
    if missing:
        raise CaseError(f"{dataset.root}: test cases without a reference label: {missing}")
    configs = {run: run_config(base, run, out_dir / run.folder) for run in runs}
    results = {run: read_result(Path(cfg.out_dir), run, cfg) for run, cfg in configs.items()}
    todo = [run for run in runs if results[run] is None]
    test_cases = [ref.load() for ref in dataset.of_patients(split.test)] if todo else []
    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="benchmark", unit="run",
              disable=None if progress else True) as bar:
        for run in todo:
            bar.set_postfix_str(f"{run.method} {backend_tag(run.backend)} L{run.labeled} s{run.seed}")
            results[run] = execute_run(run, configs[run], dataset, split, test_cases, frontend, progress)
            bar.update(1)
    done = [results[run] for run in runs]
    write_tables(done, dataset.root, out_dir)
    return done


def collect_results(out_dir: Path) -> list[RunResult]:
    """Every finished run under ``out_dir/runs``, whichever command ran it, ordered by labeled
    set, method (METHODS order), backend and seed. Runs scored on different test volumes or
    classes cannot share a table and raise ValueError naming two of them."""
    found = [(path, _load_result(path)[1]) for path in sorted((Path(out_dir) / "runs").rglob(RESULT_FILE))]
    if not found:
        raise CaseError(f"{out_dir}: no finished benchmark runs (no runs/**/{RESULT_FILE})")
    first_path, first = found[0]
    for path, r in found[1:]:
        if r.class_names != first.class_names or set(r.scores) != set(first.scores):
            raise ValueError(f"{path} and {first_path} were scored on different test volumes or classes; "
                             "they cannot share one table")
    order = {m: i for i, m in enumerate(METHODS)}
    results = [r for _, r in found]
    results.sort(key=lambda r: (r.run.labeled, order.get(r.run.method, len(order)), r.run.backend, r.run.seed))
    return results


def data_of(results: Sequence[RunResult]) -> str:
    """The dataset folder the runs of ``results`` ran on, as their markers say: one folder, the
    folders joined by ', ' when they differ, or 'unknown' when no marker says."""
    folders = sorted({r.data for r in results if r.data})
    return ", ".join(folders) if folders else "unknown"


def write_tables(results: Sequence[RunResult], data_root: Path | str, out_dir: Path) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` in ``out_dir``."""
    write_text_atomic(out_dir / "results.csv", results_csv(results))
    write_text_atomic(out_dir / "results.md", results_markdown(results, data_root, relative_to=out_dir))
    plot_results(out_dir / "results.png", results)


# -- tables and plot -------------------------------------------------------------------------------

def run_values(result: RunResult) -> dict[str, dict[str, float]]:
    """Per class name and ``'mean'``: the run's Dice and HD95, means over test volumes."""
    summary = result.summary
    out = {name: {"dice": stats["dice"].mean, "hd95": stats["hd95"].mean} for name, stats in summary.per_class.items()}
    out[MEAN_ROW] = {"dice": summary.overall["dice"].mean, "hd95": summary.overall["hd95"].mean}
    return out


def results_csv(results: Sequence[RunResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in results:
        for name, v in run_values(r).items():
            writer.writerow([r.run.method, r.run.backend, r.run.labeled, r.run.seed, name,
                             repr(float(v["dice"])), repr(float(v["hd95"])), len(r.scores)])
    return buf.getvalue()


def group_results(results: Sequence[RunResult]) -> dict[tuple[str, str, str], list[RunResult]]:
    """Results by (method, backend, labeled set), in the order they first appear."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.run.method, r.run.backend, r.run.labeled), []).append(r)
    return groups


def _mean_std(values: Sequence[float], digits: int) -> str:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return "n/a" if v.size == 0 else f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def results_markdown(results: Sequence[RunResult], data_root: Path, relative_to: Optional[Path] = None) -> str:
    """One row per method / backend / labeled set: Dice and HD95 (mm) per class and their mean
    over classes, each as mean ± std over seeds (population std) of the per-run means over
    the test volumes. Backend paths under ``relative_to`` are shown relative to it."""
    if not results:
        raise ValueError("no benchmark results to tabulate")
    prefix = f"{relative_to}{os.sep}" if relative_to is not None else None
    names = [str(n) for n in results[0].class_names[1:]] + [MEAN_ROW]
    head = (["method", "backend", "labeled", "seeds"] + [f"Dice {n}" for n in names]
            + [f"HD95 {n} (mm)" for n in names])
    lines = [
        "# Benchmark",
        "",
        (f"Data: `{data_root}`; {len(results[0].scores)} test volume(s). Each cell: mean ± std over seeds "
         "of the run's mean over test volumes (3D, student A for trained methods); `mean` is the "
         "mean over foreground classes."),
        "",
        "| " + " | ".join(head) + " |",
        "| --- | --- | --- | ---: | " + " | ".join(["---:"] * (2 * len(names))) + " |",
    ]
    for (method, backend, labeled), group in group_results(results).items():
        values = [run_values(r) for r in group]
        dice = [_mean_std([v[n]["dice"] for v in values], 4) for n in names]
        hd95 = [_mean_std([v[n]["hd95"] for v in values], 2) for n in names]
        shown = backend.replace(prefix, "") if prefix else backend
        cells = [method, f"`{shown}`" if backend else "-", labeled, str(len(group))] + dice + hd95
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def row_label(method: str, backend: str) -> str:
    return method if not backend else f"{method}\n{backend_tag(backend)}"


def plot_results(path: Path, results: Sequence[RunResult]) -> Path:
    """Mean Dice over classes per method / backend, one panel per labeled set (the seeds'
    bar, whisker and dots: :func:`joint.app.figures.plot_dice_bars`)."""
    panels: dict[str, dict[str, list[float]]] = {}
    for (method, backend, labeled), group in group_results(results).items():
        rows = panels.setdefault(f"labeled set {labeled}", {})
        rows[row_label(method, backend)] = [run_values(r)[MEAN_ROW]["dice"] for r in group]
    return plot_dice_bars(path, panels)
