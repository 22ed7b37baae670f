"""The comparison grid behind ``cctr benchmark``: methods x registration backends x labeled draws
x seeds on one dataset, every run scored in 3D on the same validation and test volumes.

A :class:`Run` is one cell. Registration backends only matter for the registration methods
(``cctr-rsl``, ``cctr``, ``cctr+``, ``cctr-coupled`` (learned backends only),
``registration-only``); every other method runs once per labeled draw and seed. A labeled
*draw* is one labeled set of the requested size (:func:`seg.data.split.with_drawn_sets`): draw 0
is the split's own set, the others are drawn from recorded seeds, and every method uses the same
draws, so comparisons pair. Each draw has its own configuration (:class:`DrawSetup`): the
dataset's plan reads the labels of that draw only, and a bare ``learned`` backend is the net
pretrained on that draw's plan.

Each run lives in ``OUT/runs/<method>/<backend>/labeled-<set>/draw-<d>/seed-<k>``: trained (an
interrupted training resumes from its ``last.pt``), then scored under both checkpoint rules:
student A of ``best.pt`` (picked by validation Dice) and of ``last.pt`` (which nothing can tune)
predicts the test volumes, written as NIfTI (``predictions/`` and ``predictions-last/``) and
scored per volume and class, and the validation volumes, scored only. Last, written
atomically, comes the marker ``result.json`` (options and every score). A run with a marker is
never redone; one whose marker holds other options is refused rather than mixed into a table.
Grids run by separate commands (or processes) on the same folder are put into one table by
:func:`collect_results`; :mod:`joint.app.comparison` writes the tables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from cctr.joint.app.stages import predict_cases, score_cases, train_segmentation
from cctr.joint.config import JointConfig, with_backend
from cctr.joint.methods import COUPLED, METHODS, REGISTRATION_METHODS, REGISTRATION_ONLY, propagate_and_score, run_backend
from cctr.reg.placement import FrontEnd
from cctr.reg.spec import BackendSpec
from cctr.seg.atomic import write_json
from cctr.seg.config import from_dict, to_dict
from cctr.seg.data.case import Case, CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.metrics import ClassScore
from cctr.seg.report import Summary, summarize, write_scores_csv
from cctr.seg.run_identity import config_changes

RESULT_FILE = "result.json"
PREDICTIONS = "predictions"   # a run's test predictions by best.pt (NIfTI), so `cctr eval` can re-score them
CHECKPOINTS = ("best", "last")
SUBSETS = ("val", "test")
LEARNED = "learned"           # a bare backend: the net the benchmark pretrains on each draw's plan

# subset -> checkpoint rule -> case id -> foreground class -> score
Scores = dict[str, dict[str, dict[str, dict[int, ClassScore]]]]


@dataclass(frozen=True)
class Run:
    method: str
    backend: str     # registration backend spec ('learned': the draw's pretrained net); '' for none
    labeled: str     # the labeled set asked for (its size is every draw's)
    draw: int
    seed: int

    @property
    def folder(self) -> Path:
        """Where the run lives, relative to the benchmark folder."""
        return (Path("runs") / self.method / backend_tag(self.backend) / f"labeled-{self.labeled}"
                / f"draw-{self.draw}" / f"seed-{self.seed}")


@dataclass(frozen=True)
class RunResult:
    run: Run
    class_names: tuple[str, ...]
    scores: Scores
    data: str = ""   # the dataset folder it ran on (absolute)

    def case_dice(self, subset: str = "test", checkpoint: str = "best") -> dict[str, float]:
        """Case id -> mean foreground Dice of the case."""
        return {case: float(np.mean([s.dice for s in per.values()]))
                for case, per in self.scores[subset][checkpoint].items()}

    def summary(self, subset: str = "test", checkpoint: str = "best") -> Summary:
        return summarize(self.scores[subset][checkpoint], self.class_names)


@dataclass(frozen=True)
class DrawSetup:
    """What the runs of one labeled draw share: the name of its labeled set in the benchmark's
    split, the configuration planned from it, the classical backends' front end, and the
    checkpoint a bare ``learned`` backend stands for (None when no such backend runs)."""

    labeled_set: str
    base: JointConfig
    frontend: FrontEnd
    learned: Optional[Path] = None

    def backend_spec(self, backend: str) -> str:
        if backend == LEARNED:
            if self.learned is None:
                raise ValueError("a bare 'learned' backend needs the draw's pretrained net")
            return f"learned:{self.learned}"
        return backend


def backend_tag(spec: str) -> str:
    """A folder name for a backend spec (:attr:`reg.spec.BackendSpec.tag`); 'none' for no backend."""
    if not spec:
        return "none"
    return LEARNED if spec == LEARNED else BackendSpec.parse(spec).tag


def _is_learned(backend: str) -> bool:
    return backend == LEARNED or BackendSpec.parse(backend).is_learned


def plan_runs(methods: Sequence[str], backends: Sequence[str], labeled_sets: Sequence[str], draws: int,
              seeds: Sequence[int]) -> list[Run]:
    """Every run of the grid, draw by draw and seed by seed (so a partial grid already compares
    the methods); unknown methods and a registration method without any backend are refused."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if not methods or not labeled_sets or not seeds or draws < 1:
        raise ValueError("the grid needs at least one method, one labeled set, one draw and one seed")
    if any(m in REGISTRATION_METHODS for m in methods) and not backends:
        raise ValueError(f"methods {[m for m in methods if m in REGISTRATION_METHODS]} need at least one --backends spec")
    runs = []
    for labeled in labeled_sets:
        for draw in range(1 if labeled == "all" else draws):
            for seed in seeds:
                for method in methods:
                    for backend in (backends if method in REGISTRATION_METHODS else ("",)):
                        if method == COUPLED and not _is_learned(backend):
                            continue  # it fine-tunes the learned net: a classical backend has none to train
                        runs.append(Run(method, backend, labeled, draw, int(seed)))
    return runs


def run_config(setup: DrawSetup, run: Run, out_dir: Path) -> JointConfig:
    cfg = with_backend(setup.base, setup.backend_spec(run.backend)) if run.backend else setup.base
    return replace(cfg, method=run.method, labeled=setup.labeled_set, seed=run.seed, out_dir=str(out_dir))


def _scores_to_json(scores: Scores) -> dict:
    return {subset: {rule: {case: {str(c): {"dice": s.dice, "hd95": s.hd95, "asd": s.asd} for c, s in per.items()}
                            for case, per in by_case.items()} for rule, by_case in by_rule.items()}
            for subset, by_rule in scores.items()}


def _scores_from_json(data: Mapping) -> Scores:
    return {subset: {rule: {case: {int(c): ClassScore(**s) for c, s in per.items()} for case, per in by_case.items()}
                     for rule, by_case in by_rule.items()} for subset, by_rule in data.items()}


def _load_result(path: Path) -> tuple[dict, RunResult]:
    """The marker at ``path``: its raw JSON and the result it holds; a file that is not one
    raises CaseError naming it."""
    try:
        data = json.loads(path.read_text())
        spec = data["run"]
        run = Run(spec["method"], spec["backend"], str(spec["labeled"]), int(spec["draw"]), int(spec["seed"]))
        scores = _scores_from_json(data["scores"])
        if set(scores) != set(SUBSETS) or any(set(v) != set(CHECKPOINTS) for v in scores.values()):
            raise ValueError(f"scores of {sorted(scores)}, expected {list(SUBSETS)} x {list(CHECKPOINTS)}")
        return data, RunResult(run, tuple(data["class_names"]), scores, str(data.get("data", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{path}: not a benchmark result of this version ({type(exc).__name__}: {exc}); "
                        "delete it to redo the run") from exc


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


def execute_run(run: Run, cfg: JointConfig, dataset: Dataset, split: Split, cases: Mapping[str, Sequence[Case]],
                frontend: Optional[FrontEnd] = None, progress: bool = True) -> RunResult:
    """Train (or resume) and score one run on ``cases`` (subset -> labeled cases), then write its
    marker; see the module docstring."""
    folder = Path(cfg.out_dir)
    class_names = tuple(dataset.class_names)
    scores: Scores = {}
    if run.method == REGISTRATION_ONLY:
        backend = run_backend(cfg, frontend)
        atlases = [ref.load() for ref in dataset.of_patients(split.labeled(cfg.labeled))]
        for subset in SUBSETS:
            _, by_case = propagate_and_score(cfg, atlases, cases[subset], len(class_names), backend, progress)
            scores[subset] = {rule: by_case for rule in CHECKPOINTS}   # no checkpoint to choose
    else:
        best = train_segmentation(cfg, dataset, split, frontend, progress)
        checkpoints = {"best": best, "last": folder / "last.pt"}
        for subset in SUBSETS:
            scores[subset] = {}
            for rule, checkpoint in checkpoints.items():
                where = folder / (PREDICTIONS if rule == "best" else f"{PREDICTIONS}-last")
                predicted = predict_cases(checkpoint, cases[subset], where if subset == "test" else None,
                                          progress=progress)
                scores[subset][rule] = score_cases(predicted, cases[subset])
        write_scores_csv(folder / "scores.csv", scores["test"]["best"], class_names)
    data = str(Path(dataset.root).resolve())
    write_json(folder / RESULT_FILE, {
        "run": {"method": run.method, "backend": run.backend, "labeled": run.labeled, "draw": run.draw,
                "seed": run.seed},
        "class_names": list(class_names),
        "config": to_dict(cfg),
        "scores": _scores_to_json(scores),
        "data": data,
    })
    return RunResult(run, class_names, scores, data)


def run_grid(runs: Sequence[Run], setups: Mapping[tuple[str, int], DrawSetup], dataset: Dataset, split: Split,
             out_dir: Path, progress: bool = True) -> list[RunResult]:
    """Every run of ``runs`` (their draws' setups in ``setups``, keyed by (labeled set, draw)),
    skipping finished ones."""
    out_dir = Path(out_dir)
    for subset, patients in (("val", split.val), ("test", split.test)):
        if not patients:
            raise CaseError(f"{dataset.root}: the split has no {subset} patients to score the runs on")
        missing = [ref.case_id for ref in dataset.of_patients(patients) if not ref.has_label]
        if missing:
            raise CaseError(f"{dataset.root}: {subset} cases without a reference label: {missing}")
    configs = {run: run_config(setups[(run.labeled, run.draw)], run, out_dir / run.folder) for run in runs}
    results = {run: read_result(Path(cfg.out_dir), run, cfg) for run, cfg in configs.items()}
    todo = [run for run in runs if results[run] is None]
    cases = ({subset: [ref.load() for ref in dataset.of_patients(getattr(split, subset))] for subset in SUBSETS}
             if todo else {})
    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="benchmark", unit="run",
              disable=None if progress else True) as bar:
        for run in todo:
            bar.set_postfix_str(f"{run.method} {backend_tag(run.backend)} L{run.labeled} d{run.draw} s{run.seed}")
            setup = setups[(run.labeled, run.draw)]
            results[run] = execute_run(run, configs[run], dataset, split, cases, setup.frontend, progress)
            bar.update(1)
    return [results[run] for run in runs]  # type: ignore[misc]


def collect_results(out_dir: Path) -> list[RunResult]:
    """Every finished run under ``out_dir/runs``, whichever command ran it, ordered by labeled
    set, method (METHODS order), backend, draw and seed. Runs scored on different volumes or
    classes cannot share a table and raise ValueError naming two of them."""
    found = [(path, _load_result(path)[1]) for path in sorted((Path(out_dir) / "runs").rglob(RESULT_FILE))]
    if not found:
        raise CaseError(f"{out_dir}: no finished benchmark runs (no runs/**/{RESULT_FILE})")
    first_path, first = found[0]
    for path, r in found[1:]:
        if r.class_names != first.class_names or any(set(r.scores[s]["best"]) != set(first.scores[s]["best"])
                                                     for s in SUBSETS):
            raise ValueError(f"{path} and {first_path} were scored on different volumes or classes; "
                             "they cannot share one table")
    order = {m: i for i, m in enumerate(METHODS)}
    results = [r for _, r in found]
    results.sort(key=lambda r: (r.run.labeled, order.get(r.run.method, len(order)), r.run.backend, r.run.draw,
                                r.run.seed))
    return results


def data_of(results: Sequence[RunResult]) -> str:
    """The dataset folder the runs of ``results`` ran on, as their markers say: one folder, the
    folders joined by ', ' when they differ, or 'unknown' when no marker says."""
    folders = sorted({r.data for r in results if r.data})
    return ", ".join(folders) if folders else "unknown"
