"""Seconds per training step of ``cct`` and of ``cctr`` (learned backend, warm cache) on the same
batches, in one run; prints the medians and their ratio (target: cctr <= 1.3x cct). With
``--coupled`` also ``cctr-coupled`` (its registration steps and Field refreshes, without the
once-per-run mid-run and closing phases), with the ratio of means too, since those costs come
every few steps (target: <= 2.0x). Each refresh of its served Fields is paid for in
the step after it, so with ``--coupled`` the warm-up and the timed window are rounded up to
whole refresh cycles (:func:`whole_cycles`): the window starts just after a refresh and holds as
many refreshes as cycles, the rate of a run; the warm-up also covers the coupled run's own
(the first sixth of its steps take no registration step).

    python scripts/bench_steptime.py [--out runs/bench_steptime] [--data DIR] [--patients 16]
        [--reg-ckpt CKPT] [--reg-steps 3] [--steps 30] [--warmup 5] [--threads 1] [--coupled] [--set key=value ...]

The two trainings run in two threads of this process through the ordinary trainer
(:func:`seg.train.train` with :func:`joint.methods.trainer_methods`) and take turns one step at a time, so a change of load on
the machine hits both alike. A clock is added to each run as an extra trainer term: the time
between two of its calls is one whole step (sampling, forward, every loss, backward,
optimiser, memory-bank refresh, logging), measured only while that run holds the turn. Both
runs use one config and seed apart from the method, so their samplers draw the same batches
(checked). ``cctr``'s oracle is warmed before its first step, so every step finds its Fields
and warped labels in memory. Without ``--reg-ckpt`` a tiny registration net is trained first:
its quality does not change the cost of a step. Without ``--data`` a phantom is generated.
``scripts/bench_scale.py`` times its steps with the same functions (:func:`timing_base`,
:func:`timed_configs`, :func:`time_steps`, :func:`step_stats`).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from cctr.joint.app.stages import pretrain_registration
from cctr.joint.config import JointConfig, build_config, with_backend
from cctr.joint.methods import TRAINER_METHODS
from cctr.reg.config import RegConfig
from cctr.seg.data.phantom import write_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import Split
from cctr.seg.hooks import TrainerHook
from cctr.seg.slices import SliceBatch
from cctr.seg.train import train


class Turns:
    """Players take turns: :meth:`hand_over` ends the caller's turn and returns at its next one."""

    def __init__(self, players: Sequence[str]) -> None:
        self._order = list(players)
        self._active = set(players)
        self._turn = self._order[0]
        self._cond = threading.Condition()

    def _next_after(self, me: str) -> str:
        i = self._order.index(me)
        for k in range(1, len(self._order) + 1):
            other = self._order[(i + k) % len(self._order)]
            if other in self._active:
                return other
        return me

    def hand_over(self, me: str) -> None:
        with self._cond:
            self._turn = self._next_after(me)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == me)

    def leave(self, me: str) -> None:
        """``me`` plays no more (finished or failed): the others keep taking turns without it."""
        with self._cond:
            self._active.discard(me)
            if self._turn == me:
                self._turn = self._next_after(me)
            self._cond.notify_all()


class StepClock(TrainerHook):
    """A trainer hook that adds no loss: it times the step just completed and hands the turn
    over between steps. ``seconds[k]`` is the step from call k to call k + 1."""

    name = "clock"

    def __init__(self, player: str, turns: Turns) -> None:
        self.player = player
        self.turns = turns
        self.seconds: list[float] = []
        self.batches: list[str] = []
        self._resumed: Optional[float] = None

    def losses(self, step: int, batch: SliceBatch, outputs: Mapping) -> dict:
        now = time.perf_counter()
        if self._resumed is not None:
            self.seconds.append(now - self._resumed)
        self.batches.append(hashlib.blake2b(batch.image.numpy().tobytes(), digest_size=8).hexdigest())
        self.turns.hand_over(self.player)
        self._resumed = time.perf_counter()
        return {}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_steptime"))
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: a phantom in OUT/phantom)")
    p.add_argument("--patients", type=int, default=16, help="phantom patients when generating (default 16)")
    p.add_argument("--labeled", default="1", help="labeled set of the split (default '1')")
    p.add_argument("--reg-ckpt", type=Path, default=None, help="learned registration checkpoint (default: train a tiny one)")
    p.add_argument("--reg-steps", type=int, default=3, help="steps of the tiny registration net (default 3)")
    p.add_argument("--steps", type=int, default=30,
                   help="timed steps per method (default 30; with --coupled rounded up to whole refresh cycles)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed first steps per method (default 5; with --coupled rounded up to whole refresh cycles)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as cctr demo / benchmark; 0 keeps torch's default)")
    p.add_argument("--coupled", action="store_true",
                   help="also time cctr-coupled (target: <= 2.0x cct), registration steps from step 0")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="segmentation option for both runs (cpu-small preset otherwise)")
    return p.parse_args(argv)


def run_pair(configs: dict[str, JointConfig], dataset, split: Split) -> dict[str, StepClock]:
    """Train every config in its own thread, one step each in turn; the clocks of the runs."""
    turns = Turns(list(configs))
    clocks = {name: StepClock(name, turns) for name in configs}
    errors: dict[str, BaseException] = {}

    def play(name: str) -> None:
        try:
            train(configs[name], dataset, split, hooks=(clocks[name],), methods=TRAINER_METHODS, progress=False)
        except BaseException as exc:  # re-raised in the main thread
            errors[name] = exc
        finally:
            turns.leave(name)

    threads = [threading.Thread(target=play, args=(name,), name=f"train-{name}") for name in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, exc in errors.items():
        raise RuntimeError(f"the {name} run failed: {exc}") from exc
    return clocks


def tiny_registration_net(dataset, split: Split, out: Path, steps: int, labeled: str,
                          base: RegConfig = RegConfig()) -> Path:
    """The checkpoint of a registration net trained ``steps`` steps from ``base`` in
    ``OUT/reg-<steps>steps`` (reused when finished): a step's cost does not depend on its quality."""
    cfg = base.with_overrides(steps=steps, val_every=steps)
    return pretrain_registration(dataset, split, cfg, out / f"reg-{steps}steps", labeled)


def timing_base(overrides: Sequence[str], labeled: str, cache: Path, steps: int, warmup: int,
                planned: Optional[Mapping] = None) -> JointConfig:
    """The config both timed runs share: long enough for ``warmup + steps`` timed intervals,
    never validating or checkpointing, the Field cache in ``cache``."""
    cfg = build_config(None, overrides, labeled=labeled, field_cache=str(cache), planned=planned)
    return sized(replace(cfg, val_every=10 ** 9), warmup, steps)


def sized(cfg: JointConfig, warmup: int, steps: int) -> JointConfig:
    """``cfg`` long enough for ``warmup + steps`` timed intervals (one step more than that)."""
    return replace(cfg, iterations=warmup + steps + 1)


def timed_configs(base: JointConfig, reg_ckpt: Path, coupled: bool = False) -> dict[str, JointConfig]:
    """``cct`` and ``cctr`` (learned backend) from ``base``; with ``coupled`` also ``cctr-coupled``."""
    configs = {
        "cct": replace(base, method="cct"),
        "cctr": replace(with_backend(base, f"learned:{reg_ckpt}"), method="cctr"),
    }
    if coupled:
        # no mid-run or closing phase: each comes once per run, not with every step (the run's
        # time reports them)
        once = replace(base.coupled, final_phase=0.0, mid_phase=0.0)
        configs["cctr-coupled"] = replace(with_backend(base, f"learned:{reg_ckpt}"), method="cctr-coupled",
                                          coupled=once)
    return configs


def whole_cycles(warmup: int, steps: int, cycle: int) -> tuple[int, int]:
    """``warmup`` and ``steps`` rounded up to multiples of ``cycle`` (at least one cycle each).

    A refresh of the served Fields comes after every ``cycle``-th step and its cost falls in
    the step or steps after it; a window starting after a whole number of cycles and lasting a whole
    number of them holds one refresh per cycle, as a run does (a window of 60 steps after 5
    with refreshes every 50 held one, whose recomputation only partly fell inside)."""
    def up(n: int) -> int:
        return max(1, -(-n // cycle)) * cycle
    return up(warmup), up(steps)


def without_validation(split: Split) -> Split:
    """``split`` with no validation patients: the trainer then never validates, not even after
    the last step, so no step carries a validation's cost."""
    return Split(train=split.train, val=(), test=split.test, labeled_sets=split.labeled_sets)


def time_steps(configs: Mapping[str, JointConfig], dataset, split: Split, scratch: Path) -> tuple[dict[str, StepClock], float]:
    """Run ``configs`` taking turns (:func:`run_pair`) without validation, each in a run folder
    named after it in a fresh folder under ``scratch``, removed afterwards; the clocks and the
    wall time in seconds."""
    runs = Path(tempfile.mkdtemp(prefix="runs-", dir=str(scratch)))
    try:
        placed = {name: replace(cfg, out_dir=str(runs / name)) for name, cfg in configs.items()}
        started = time.perf_counter()
        clocks = run_pair(placed, dataset, without_validation(split))
        return clocks, time.perf_counter() - started
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def step_stats(clocks: Mapping[str, StepClock], warmup: int) -> dict[str, dict[str, float]]:
    """Per run: median, mean, min and max seconds of the steps after the first ``warmup``."""
    out = {}
    for name, clock in clocks.items():
        s = np.asarray(clock.seconds[warmup:])
        out[name] = {"median": float(np.median(s)), "mean": float(s.mean()), "min": float(s.min()),
                     "max": float(s.max()), "steps": int(s.size)}
    return out


def same_batches(clocks: Mapping[str, StepClock]) -> bool:
    """Whether every run drew the same batches as the first."""
    first = next(iter(clocks.values())).batches
    return all(clock.batches == first for clock in clocks.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 0:
        raise SystemExit("--steps must be >= 1, --warmup and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data or args.out / "phantom"
    if args.data is None and not (data_dir / "dataset.json").is_file():
        write_phantom(data_dir, args.patients, seed=0)
    dataset = open_dataset(data_dir)
    if dataset.default_split is None:
        raise SystemExit(f"{data_dir}: no split.json")
    full = dataset.default_split

    reg_ckpt = args.reg_ckpt
    if reg_ckpt is None:
        reg_ckpt = tiny_registration_net(dataset, full, args.out, args.reg_steps, args.labeled)

    base = timing_base(args.overrides, args.labeled, args.out / "reg-cache", args.steps, args.warmup)
    warmup, steps = args.warmup, args.steps
    if args.coupled:
        cycle = base.coupled.refresh_every
        warmup, steps = whole_cycles(warmup, steps, cycle)
        warmup = whole_cycles(max(warmup, -(-(warmup + steps) // 5)), steps, cycle)[0]   # past the coupled warm-up
        base = sized(base, warmup, steps)
        print(f"--coupled: warm-up {warmup} and {steps} timed steps, whole cycles of coupled.refresh_every={cycle}",
              flush=True)
    configs = timed_configs(base, reg_ckpt, args.coupled)
    clocks, wall = time_steps(configs, dataset, full, args.out)

    same = same_batches(clocks)
    stats = step_stats(clocks, warmup)
    medians = {name: s["median"] for name, s in stats.items()}
    print(f"{steps} timed steps per method after {warmup} warm-up steps, taking turns step by step; "
          f"batch {base.labeled_batch} labeled + {base.unlabeled_batch} unlabeled at {base.image_size[0]}x{base.image_size[1]}; "
          f"same batches in both runs: {same}; torch threads {torch.get_num_threads()}; wall {wall:.0f} s")
    print("| method | median s/step | mean s/step | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s in stats.items():
        print(f"| {name} | {s['median']:.3f} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    print(f"cctr / cct median step time: {medians['cctr'] / medians['cct']:.2f} (target <= 1.3)")
    if "cctr-coupled" in clocks:
        # a registration step comes every coupled.every steps and a refresh every refresh_every:
        # the mean, not the median, carries their share
        means = {name: s["mean"] for name, s in stats.items()}
        print(f"cctr-coupled / cct median step time: {medians['cctr-coupled'] / medians['cct']:.2f}, "
              f"mean step time: {means['cctr-coupled'] / means['cct']:.2f} (target <= 2.0)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
