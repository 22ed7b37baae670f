"""Scale benchmark: what ``cctr`` costs on generated data of the real datasets' sizes,
on this machine: oracle warm time and pairs/s per registration backend, the Field cache on
disk, seconds per training step of ``cct`` and ``cctr``, and peak resident memory.

    python scripts/bench_scale.py --scale acdc|synapse [--out runs/bench_scale/SCALE] [--steps 20]
        [--warmup 5] [--backends learned,sitk-demons] [--pairs-sample 4] [--reg-ckpt CKPT]
        [--reg-steps 3] [--patients N] [--matrix N] [--labeled N] [--seed 0] [--workers 2]
        [--threads 1] [--set key=value ...]

The data (generated once into ``OUT/data``, reused while its recipe in ``OUT/data-spec.json``
is unchanged):

- ``acdc``: the cardiac phantom with ACDC's counts and grids: 100 patients x 2 frames (ED, ES),
  8-15 slices (about 11 on average, 123 M voxels in all) 8-10 mm apart, 1.37-1.68 mm in plane,
  matrices of 184-320 (median 224 x 248); split 70 / 10 / 20 patients with 7 labeled, so 14
  atlas volumes and 126 unlabeled targets: 1,764 pairs under the ``random`` atlas policy.
- ``synapse``: the abdominal CT phantom at 512 x 512 (0.63-0.86 mm), 2.5-5 mm slices covering
  400-480 mm (about 80-190 slices, 127 on average, as the 30 Synapse scans); split 18 train /
  12 test as TransUNet's, 2 labeled: 16 targets x 2 atlases = 32 pairs.

``--patients`` / ``--matrix`` shrink either for a smoke test: the split keeps the real
proportions, and ``--matrix`` fixes the in-plane size (the cardiac spacings are kept, so the
field of view shrinks; the abdominal field of view is kept, so the spacing grows).

The phases, in order, each timed and with its own peak resident memory (the kernel's
high-water mark, reset between phases through ``/proc/self/clear_refs``):

1. ``data``: generation, in a child process (so its memory is not this process's).
2. ``plan``: the dataset's plan (``cctr plan``: fingerprint, student size, registration grid);
   every later phase uses it, as ``cctr train`` and ``cctr reg train`` do without ``--config``.
3. ``reg-net``: without ``--reg-ckpt``, a registration net trained ``--reg-steps`` steps on the
   planned grid. Its quality does not change what a pair or a step costs, only its grid and
   network do, and those are the planned ones.
4. ``warm-learned``: the oracle over every pair the atlas policy needs, learned backend, the
   disk cache ``OUT/reg-cache`` emptied first so every pair is computed (Fields only, as the
   trainer's warm does: a step warps its one slice on demand); then ``reload``: a fresh oracle warmed from that
   cache, what each later run sharing the cache pays at its start.
5. ``sample-<backend>``: each other backend of ``--backends`` warmed pair by pair on
   ``--pairs-sample`` pairs (distinct targets, atlases in turn), one worker process and one
   thread; its warm time for all pairs is extrapolated from that rate (marked so).
6. ``steps``: ``cct`` and ``cctr`` (learned, warm disk cache) trained side by side at the
   planned student size through ``scripts/bench_steptime.py``'s machinery (two threads taking
   turns step by step on the same batches), ``--steps`` timed steps after ``--warmup``.
7. ``cctr-alone``: one ordinary ``cctr train --method cctr`` run of ``--warmup + --steps``
   steps on the warm cache, in a child process: the peak RSS of a cctr run, which the target
   is about (the step-time phase holds two runs, each with its own copy of the cases).

The peak of the whole process is the largest of the phases' (``ru_maxrss`` before the first
reset included). Child processes are measured by their own high-water mark: a child's
``ru_maxrss`` would also count the resident pages of the parent it was started from. The data
generation's child is reported apart (its own mark or its workers' ``ru_maxrss``, the larger),
and so is this process's ``RUSAGE_CHILDREN`` (the largest of ALL children, so inflated).

Prints a markdown table and writes every figure, the hardware, the thread settings and the
command line to ``OUT/scale.json``; progress lines go to stderr. Targets (2-core CPU), checked
in the table: acdc peak RSS of the cctr run <= 6 GB, cache <= 2 GB, median cctr step <= 1.3x
cct; synapse peak RSS <= 8 GB, cctr step <= 1.5x cct (GB = 10^9 bytes). The Field cache stays
in ``OUT/reg-cache`` afterwards, the data in ``OUT/data``.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from cctr.joint.oracle import OracleConfig, RegistrationOracle
from cctr.joint.plan import frontend, plan_for, reg_config, seg_overrides
from cctr.reg.backends import LEARNED_BATCH, load_backend
from cctr.reg.placement import FrontEnd
from cctr.reg.spec import BackendSpec
from cctr.seg.atomic import write_json
from cctr.seg.data.case import Case
from cctr.seg.data.nifti import read_nifti_geometry
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.phantom_abdomen import AbdomenPhantomConfig, write_abdomen_phantom
from cctr.seg.data.readers import open_dataset
from cctr.seg.data.split import SPLIT_FILENAME, Split, save_split
from cctr.seg.progress import interval_from_env
from cctr.seg.train_data import TrainData, load_train_data

GB = 10 ** 9
LEARNED = "learned"


def _load_sibling(name: str) -> ModuleType:
    """A script of this folder as a module (the scripts are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


steptime = _load_sibling("bench_steptime")


# -- the two scales ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """A real dataset's size, its split in patients and the issue's targets for it."""

    name: str
    patients: int
    val: int
    test: int
    labeled: int
    max_rss_gb: float
    max_cache_gb: Optional[float]
    max_step_ratio: float


SCALES = {
    "acdc": Scale("acdc", patients=100, val=10, test=20, labeled=7, max_rss_gb=6.0, max_cache_gb=2.0,
                  max_step_ratio=1.3),
    # TransUNet's split: 18 train / 12 test, no validation
    "synapse": Scale("synapse", patients=30, val=0, test=12, labeled=2, max_rss_gb=8.0, max_cache_gb=None,
                     max_step_ratio=1.5),
}


def acdc_phantom_config(matrix: Optional[int] = None) -> PhantomConfig:
    """The cardiac phantom on ACDC's grids: slices 8-10 mm apart give about 11 per volume, as
    ACDC's about 10 (its 5-10 mm range would give more: the phantom's stack always spans the
    whole heart, so its count grows as the spacing shrinks); a 300-380 mm field of view at
    1.37-1.68 mm gives ACDC's typical matrices (median 224 x 248)."""
    cfg = PhantomConfig(slices=(6, 18), slice_spacing_mm=(8.0, 10.0), inplane_spacing_mm=(1.37, 1.68),
                        matrix=(154, 428), fov_mm=(300.0, 380.0))
    return cfg if matrix is None else replace(cfg, matrix=(matrix, matrix))


def synapse_phantom_config(matrix: Optional[int] = None) -> AbdomenPhantomConfig:
    """The abdominal phantom on Synapse's grid: 512 x 512, 2.5-5 mm slices over 400-480 mm, so
    the 30 volumes hold about as many slices as the real ones (3,779)."""
    cfg = replace(AbdomenPhantomConfig.full_size(), coverage_mm=(400.0, 480.0))
    return cfg if matrix is None else replace(cfg, matrix=matrix)


def scale_split(patient_ids: Sequence[str], scale: Scale, seed: int = 0, labeled: Optional[int] = None) -> Split:
    """A split of ``patient_ids`` in ``scale``'s proportions (exactly its counts at its full
    patient count), drawn from ``seed``; one labeled set, named by its size, of ``labeled``
    patients (default: the scale's share of the training patients, at least 1)."""
    ids = sorted(dict.fromkeys(patient_ids))
    share = len(ids) / scale.patients
    n_test = max(1, round(scale.test * share))
    n_val = round(scale.val * share)
    n_train = len(ids) - n_test - n_val
    if n_train < 2:
        raise ValueError(f"{scale.name}: {len(ids)} patients leave {n_train} for training; need at least 2")
    if labeled is None:
        labeled = max(1, round(scale.labeled * n_train / (scale.patients - scale.val - scale.test)))
    if not 1 <= labeled < n_train:
        raise ValueError(f"{scale.name}: {labeled} labeled of {n_train} training patients; need 1 to {n_train - 1}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return Split(train=tuple(train), val=tuple(sorted(val)), test=tuple(sorted(test)),
                 labeled_sets={str(labeled): tuple(train[:labeled])})


# -- measuring ---------------------------------------------------------------------------------
def disk_usage(folder: Path) -> dict[str, int]:
    """Files under ``folder``, their bytes on disk (allocated blocks, as ``du``) and their
    apparent size; zeros when it does not exist."""
    files = used = apparent = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed meanwhile (an atomic writer's temporary)
                continue
            files += 1
            apparent += st.st_size
            used += getattr(st, "st_blocks", -(-st.st_size // 512)) * 512
    return {"files": files, "bytes": used, "apparent_bytes": apparent}


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """This process's resident high-water mark in bytes (since the last :func:`reset_peak_rss`)."""
    hwm = _status_kb("VmHWM")
    # ru_maxrss is in kB on Linux
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Restart the high-water mark at the current resident size (Linux >= 4.0); whether it did."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def children_peak_rss() -> int:
    """The largest ``ru_maxrss`` among the finished child processes, bytes (any child: helpers
    forked by libraries too)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def log(message: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def heartbeat(name: str, started: float, detail: Callable[[], str] = lambda: "") -> Iterator[None]:
    """A progress line every ``CCTR_PROGRESS_SECONDS`` (default 30) while the block runs, so a
    log shows a long phase is alive."""
    stop = threading.Event()
    every = interval_from_env(30.0) or 30.0

    def beat() -> None:
        while not stop.wait(every):
            extra = detail()
            log(f"{name}: {time.perf_counter() - started:.0f} s{'; ' + extra if extra else ''}")

    thread = threading.Thread(target=beat, name=f"heartbeat-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Phases:
    """Wall time and peak resident memory of each phase of the run."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, float]] = {}
        self.process_peak = peak_rss()  # before the first reset: imports and start-up
        self.resettable = True

    @contextmanager
    def phase(self, name: str, detail: Callable[[], str] = lambda: "") -> Iterator[None]:
        gc.collect()  # what an earlier phase dropped is not this one's
        self.process_peak = max(self.process_peak, peak_rss())
        self.resettable = reset_peak_rss() and self.resettable
        log(f"{name}: start")
        started = time.perf_counter()
        with heartbeat(name, started, detail):
            yield
        seconds = time.perf_counter() - started
        peak = peak_rss()
        self.process_peak = max(self.process_peak, peak)
        self.records[name] = {"seconds": seconds, "peak_rss_bytes": peak}
        log(f"{name}: done in {seconds:.1f} s, this process's peak RSS {peak / GB:.2f} GB")


# -- the phases --------------------------------------------------------------------------------
def phantom_job(scale: Scale, matrix: Optional[int]) -> tuple[Callable[..., Path], Any]:
    """The writer and config of ``scale``'s phantom."""
    if scale.name == "acdc":
        return write_phantom, acdc_phantom_config(matrix)
    return write_abdomen_phantom, synapse_phantom_config(matrix)


def ensure_data(out: Path, scale: Scale, patients: int, matrix: Optional[int], seed: int,
                workers: int) -> Optional[int]:
    """Generate the dataset into ``OUT/data`` unless the one there has the same recipe. Returns
    the generating process's peak RSS in bytes (its own or its workers', the larger), None when
    reused. A new dataset makes the registration nets trained on the old one stale."""
    data_dir, spec_file = out / "data", out / "data-spec.json"
    writer, cfg = phantom_job(scale, matrix)
    spec = {"scale": scale.name, "patients": patients, "seed": seed, "config": asdict(cfg)}
    spec = json.loads(json.dumps(spec))  # tuples as lists, as read back
    if (data_dir / "dataset.json").is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return None
    spec_file.unlink(missing_ok=True)
    for stale in out.glob("reg-*steps"):
        shutil.rmtree(stale)
    # a child process: the generator's memory must not count as this process's peak
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(writer, data_dir, patients, seed=seed, cfg=cfg, workers=workers, progress=False).result()
        # asked of the same worker process. Not its ru_maxrss, which counts the pages of this
        # process it was started from; nor this process's RUSAGE_CHILDREN, the largest of
        # every child, helpers that libraries fork at import included.
        status_file = Path("/proc/self/status")
        status = pool.submit(status_file.read_text).result() if status_file.is_file() else ""
        workers_kb = pool.submit(resource.getrusage, resource.RUSAGE_CHILDREN).result().ru_maxrss
    write_json(spec_file, spec)
    own_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return max(own_kb, workers_kb) * 1024


def generated_count(out: Path) -> str:
    """How many image files the generator has written so far (its folder is hidden until done)."""
    return f"{sum(1 for _ in out.glob('.tmp-data-*/imagesTr/*'))} volumes written"


def describe_dataset(dataset, split: Split, labeled: str) -> dict[str, Any]:
    """Counts and grids of the dataset, read from the image headers only."""
    shapes, spacings = [], []
    for cid in dataset.case_ids:
        shape, spacing, _, _ = read_nifti_geometry(dataset.ref(cid).sources[0])
        shapes.append(shape)
        spacings.append(spacing)
    s, sp = np.asarray(shapes), np.asarray(spacings)
    atlases = dataset.of_patients(split.labeled(labeled))
    targets = dataset.of_patients(split.unlabeled(labeled))
    return {
        "patients": len(dataset.patient_ids), "volumes": len(shapes),
        "split": {"train": len(split.train), "val": len(split.val), "test": len(split.test),
                  "labeled_set": labeled, "labeled_patients": len(split.labeled(labeled))},
        "atlas_volumes": len(atlases), "target_volumes": len(targets),
        "slices": {"mean": float(s[:, 0].mean()), "min": int(s[:, 0].min()), "max": int(s[:, 0].max()),
                   "total": int(s[:, 0].sum())},
        "inplane": {"median": [float(np.median(s[:, 1])), float(np.median(s[:, 2]))],
                    "min": [int(s[:, 1].min()), int(s[:, 2].min())], "max": [int(s[:, 1].max()), int(s[:, 2].max())]},
        "spacing_mm": {"min": sp.min(axis=0).round(3).tolist(), "max": sp.max(axis=0).round(3).tolist()},
        "voxels": int(s.prod(axis=1).sum()),
        "disk": disk_usage(Path(dataset.root)),
    }


def pretrain_split(split: Split) -> Split:
    """``split`` with validation patients for the registration net's validation: a split
    without any (Synapse's) lends it two test patients."""
    if split.val:
        return split
    return Split(train=split.train, val=split.test[:2], test=split.test[2:], labeled_sets=split.labeled_sets)


def warm(cfg: OracleConfig, atlases: Sequence[Case], targets: Sequence[Case], seed: int,
         progress: bool, front: Optional[FrontEnd] = None) -> tuple[int, float, int]:
    """Warm a fresh oracle (classical backends on ``front``): pairs, seconds, bytes its Field
    memory cache holds afterwards."""
    oracle = RegistrationOracle(atlases, targets, load_backend(cfg.spec, front), cfg, seed=seed)
    started = time.perf_counter()
    pairs = oracle.warm(progress=progress)
    seconds = time.perf_counter() - started
    if not isinstance(pairs, int):  # the oracle need not say; every pair under 'random' and 'fused'
        pairs = len(atlases) * len(targets)
    return pairs, seconds, int(oracle.fields.nbytes)


def sample_pairs(targets: Sequence[Case], atlases: Sequence[Case], k: int) -> list[tuple[Case, Case]]:
    """``k`` (target, atlas) pairs: targets spread evenly over the list, atlases in turn, so
    the sample sees several grids on both sides."""
    picks = np.unique(np.linspace(0, len(targets) - 1, num=min(k, len(targets))).round().astype(int))
    return [(targets[i], atlases[n % len(atlases)]) for n, i in enumerate(picks)]


def time_backend(spec: str, cfg: OracleConfig, pairs: Sequence[tuple[Case, Case]], scratch: Path,
                 front: Optional[FrontEnd] = None) -> dict[str, Any]:
    """Warm ``spec`` on each pair alone, in this process with one thread (what one worker of
    ``oracle.workers`` does), writing to a scratch disk cache as the real warm does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cache = scratch / "sample-cache"
    shutil.rmtree(cache, ignore_errors=True)
    one = replace(cfg, backend=spec, cache=str(cache), workers=1)
    seconds = []
    try:
        for target, atlas in pairs:
            seconds.append(warm(one, [atlas], [target], 0, progress=False, front=front)[1])
        disk = disk_usage(cache)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(cache, ignore_errors=True)
    return {"sample_pairs": len(seconds), "seconds_per_pair": seconds,
            "pairs_per_s": len(seconds) / sum(seconds), "disk_bytes_per_pair": disk["bytes"] / max(len(seconds), 1)}


# Runs `cctr` and then writes its own resident high-water mark (kB) to argv[1]: the child's
# ru_maxrss would also count the parent's resident pages it was forked from (the kernel carries
# the old address space's high-water mark over the exec), and this parent is large by then.
_CCTR_REPORTING_PEAK = (
    "import sys\n"
    "from cctr.joint.app.cli import main\n"
    "try:\n"
    "    rc = main(sys.argv[2:])\n"
    "finally:\n"
    "    hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
    "    open(sys.argv[1], 'w').write(hwm[0] if hwm else '')\n"
    "sys.exit(rc)\n"
)


def lone_cctr_run(out: Path, data_dir: Path, labeled: str, reg_ckpt: Path, cache: Path, iterations: int,
                  overrides: Sequence[str], threads: int) -> dict[str, Any]:
    """``cctr train --method cctr`` for ``iterations`` steps in a child process, on the warm
    cache: the peak RSS of one ordinary run (the step-time phase holds two runs and their data).
    Its output goes to stderr; its run folder is removed afterwards."""
    run_dir, peak_file = out / "cctr-alone", out / "cctr-alone.peak"
    shutil.rmtree(run_dir, ignore_errors=True)
    peak_file.unlink(missing_ok=True)
    args = ["train", "--data", str(data_dir), "--labeled", labeled, "--method", "cctr",
            "--reg-backend", f"{LEARNED}:{reg_ckpt}", "--out", str(run_dir)]
    for value in [*overrides, f"oracle.cache={cache}", f"iterations={iterations}"]:
        args += ["--set", value]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CCTR_REPORTING_PEAK, str(peak_file), *args], stdout=sys.stderr,
                          env=env)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the lone cctr run failed (exit status {done.returncode}): cctr {shlex.join(args)}")
    kb = peak_file.read_text().strip() if peak_file.is_file() else ""
    peak_file.unlink(missing_ok=True)
    return {"iterations": iterations, "seconds": seconds, "peak_rss_bytes": int(kb) * 1024 if kb else None,
            "command": f"cctr {shlex.join(args)}"}


# -- the report --------------------------------------------------------------------------------
def hardware() -> dict[str, Any]:
    """The machine and the thread settings, as the run starts."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model, "memory_bytes": None if mem is None else mem * 1024,
        "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
    }


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _verdict(value: float, limit: Optional[float], unit: str = "") -> str:
    return "" if limit is None else f"<= {limit:g}{unit}: {'yes' if value <= limit else 'NO'}"


def markdown(r: dict[str, Any]) -> str:
    """The figures of ``scale.json`` as one markdown table, then the phases."""
    d, o, st, mem, t, alone = r["dataset"], r["oracle"], r["steps"], r["peak_rss"], r["targets"], r["cctr_alone"]
    learned = o[LEARNED]
    rows = [
        ("dataset", f"{d['patients']} patients, {d['volumes']} volumes ({d['atlas_volumes']} atlases, "
                    f"{d['target_volumes']} targets); slices {d['slices']['min']}-{d['slices']['max']} "
                    f"(mean {d['slices']['mean']:.1f}); in plane median {d['inplane']['median'][0]:.0f} x "
                    f"{d['inplane']['median'][1]:.0f}; {d['voxels'] / 1e6:.0f} M voxels", ""),
        ("student input (planned)", " x ".join(str(v) for v in r["plan"]["student_image_size"]), ""),
        (f"oracle warm, learned ({learned['pairs']} pairs)",
         f"{_hms(learned['warm_seconds'])} ({learned['pairs_per_s']:.2f} pairs/s)", ""),
        ("oracle reload from the disk cache", f"{_hms(learned['reload_seconds'])}", ""),
        ("Field cache on disk", f"{_gb(learned['cache_disk']['bytes'])} ({learned['cache_disk']['files']} files)",
         _verdict(learned["cache_disk"]["bytes"] / GB, t["max_cache_gb"], " GB")),
    ]
    for spec, b in o.items():
        if spec != LEARNED:
            rows.append((f"{spec} ({b['sample_pairs']}-pair sample, 1 worker, 1 thread)",
                         f"{b['pairs_per_s']:.3f} pairs/s; all {learned['pairs']} pairs: "
                         f"{_hms(b['extrapolated_warm_seconds'])} (extrapolated)", ""))
    rows += [
        (f"s/step cct (median of {st['cct']['steps']})", f"{st['cct']['median']:.3f}", ""),
        (f"s/step cctr (median of {st['cctr']['steps']})", f"{st['cctr']['median']:.3f}", ""),
        ("cctr / cct step", f"{st['ratio']:.2f}", _verdict(st["ratio"], t["max_step_ratio"])),
        (f"peak RSS, one cctr run (`cctr train`, {alone['iterations']} steps, child process)",
         "n/a" if alone["peak_rss_bytes"] is None else _gb(alone["peak_rss_bytes"]),
         "" if alone["peak_rss_bytes"] is None else _verdict(alone["peak_rss_bytes"] / GB, t["max_rss_gb"], " GB")),
        ("peak RSS, this process (every phase below but data)", _gb(mem["process_bytes"]), ""),
        ("peak RSS, step-time phase (cct + cctr in one process)", _gb(mem["steps_phase_bytes"]), ""),
        ("peak RSS, data generation (child process)",
         "reused" if mem["data_generation_bytes"] is None else _gb(mem["data_generation_bytes"]), ""),
    ]
    lines = [f"Scale benchmark `{r['scale']}` ({r['hardware']['cpus_usable']} CPUs, torch threads "
             f"{r['hardware']['torch_threads']}; the registration net is "
             f"{'given' if r['reg_net']['given'] else 'a tiny one trained ' + str(r['reg_net']['steps']) + ' steps'}: "
             f"its quality does not change the costs)", "",
             "| figure | value | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| phase | seconds | peak RSS, this process |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {p['seconds']:.1f} | {_gb(p['peak_rss_bytes'])} |" for name, p in r["phases"].items()]
    return "\n".join(lines)


def measure_oracle(phases: Phases, cfg: OracleConfig, data: TrainData, seed: int, others: Sequence[str],
                   sample_size: int, scratch: Path, front: Optional[FrontEnd] = None) -> dict[str, dict[str, Any]]:
    """Phases 4 and 5: the learned warm from an empty disk cache ``cfg.cache``, its reload, and
    each backend of ``others`` on a sample; the figures per backend."""
    show = sys.stderr.isatty()
    cache = Path(cfg.cache)
    shutil.rmtree(cache, ignore_errors=True)  # every pair computed, whatever an earlier run left
    expected = len(data.labeled) * len(data.unlabeled)
    with phases.phase("warm-learned", lambda: f"{disk_usage(cache)['files']} of ~{expected} pairs in the cache"):
        pairs, warm_seconds, field_bytes = warm(cfg, data.labeled, data.unlabeled, seed, show)
    cache_disk = disk_usage(cache)
    with phases.phase("reload"):
        _, reload_seconds, _ = warm(cfg, data.labeled, data.unlabeled, seed, show)
    out = {LEARNED: {"spec": cfg.backend, "pairs": pairs, "warm_seconds": warm_seconds,
                     "pairs_per_s": pairs / warm_seconds, "reload_seconds": reload_seconds,
                     "field_memory_bytes": field_bytes, "cache_disk": cache_disk,
                     "batch_pairs": LEARNED_BATCH, "policy": cfg.policy}}
    sample = sample_pairs(data.unlabeled, data.labeled, sample_size)
    for spec in others:
        with phases.phase(f"sample-{spec}"):
            timed = time_backend(spec, cfg, sample, scratch, front)
        out[spec] = {"spec": spec, **timed, "extrapolated_warm_seconds": pairs / timed["pairs_per_s"]}
    return out


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), required=True)
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/bench_scale/SCALE)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps per method (default 5)")
    p.add_argument("--backends", default="learned,sitk-demons",
                   help="comma-separated backend specs; the learned one is always measured (default learned,sitk-demons)")
    p.add_argument("--pairs-sample", type=int, default=4, help="pairs each other backend is timed on (default 4)")
    p.add_argument("--reg-ckpt", type=Path, default=None, help="learned registration checkpoint (default: train a tiny one)")
    p.add_argument("--reg-steps", type=int, default=3, help="steps of the tiny registration net (default 3)")
    p.add_argument("--patients", type=int, default=None, help="patients to generate (default: the real count)")
    p.add_argument("--matrix", type=int, default=None, help="in-plane size of every volume (default: the real grids)")
    p.add_argument("--labeled", type=int, default=None,
                   help="labeled patients (default: the real count, or its share of fewer training patients)")
    p.add_argument("--seed", type=int, default=0, help="phantom and split seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="processes generating the data (default 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as cctr demo / benchmark; 0 keeps torch's default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training / oracle option for every phase (the plan over cpu-small otherwise)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 0 or args.pairs_sample < 1 or args.reg_steps < 1:
        p.error("--steps, --pairs-sample and --reg-steps must be >= 1, --warmup and --threads >= 0")
    if args.workers < 1 or (args.patients is not None and args.patients < 3):
        p.error("--workers must be >= 1 and --patients >= 3")
    if args.out is None:
        args.out = Path("runs/bench_scale") / args.scale
    return args


def other_backends(specs: str) -> list[str]:
    """The non-learned specs of ``--backends``, each checked now rather than after hours of work."""
    out = []
    for spec in (s.strip() for s in specs.split(",")):
        if not spec or BackendSpec.parse(spec).is_learned:
            continue
        try:
            load_backend(spec)
        except (ValueError, ImportError) as exc:
            raise SystemExit(f"bench_scale: --backends: {exc}") from None
        out.append(spec)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = SCALES[args.scale]
    others = other_backends(args.backends)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    machine = hardware()
    phases = Phases()
    patients = args.patients or scale.patients

    with phases.phase("data", lambda: generated_count(out)):
        generator_peak = ensure_data(out, scale, patients, args.matrix, args.seed, args.workers)
    generated = generator_peak is not None
    if not generated:
        log("data: the dataset in the work folder has this recipe, reused")
        del phases.records["data"]
    data_dir = out / "data"
    dataset = open_dataset(data_dir)
    split = scale_split(dataset.patient_ids, scale, args.seed, args.labeled)
    save_split(split, data_dir / SPLIT_FILENAME)
    labeled = next(iter(split.labeled_sets))
    dataset = open_dataset(data_dir)  # with the split just written

    with phases.phase("plan"):
        plan = plan_for(dataset, split, labeled)
    planned = seg_overrides(plan)
    cache = out / "reg-cache"
    base = steptime.timing_base(args.overrides, labeled, cache, args.steps, args.warmup, planned=planned)

    reg_ckpt = args.reg_ckpt
    if reg_ckpt is None:
        with phases.phase("reg-net"):
            reg_ckpt = steptime.tiny_registration_net(dataset, pretrain_split(split), out, args.reg_steps, labeled,
                                                      base=reg_config(plan))
    oracle_cfg = replace(base.oracle, backend=f"{LEARNED}:{reg_ckpt}", cache=str(cache))

    oracle = measure_oracle(phases, oracle_cfg, load_train_data(dataset, steptime.without_validation(split), labeled),
                            base.seed, others, args.pairs_sample, out, frontend(plan))

    with phases.phase("steps"):
        clocks, wall = steptime.time_steps(steptime.timed_configs(base, reg_ckpt), dataset, split, out)
    stats = steptime.step_stats(clocks, args.warmup)
    steps = {**stats, "ratio": stats["cctr"]["median"] / stats["cct"]["median"],
             "same_batches": steptime.same_batches(clocks), "wall_seconds": wall, "warmup": args.warmup,
             "batch": {"labeled": base.labeled_batch, "unlabeled": base.unlabeled_batch}}

    with phases.phase("cctr-alone"):
        alone = lone_cctr_run(out, data_dir, labeled, reg_ckpt, cache, args.warmup + args.steps, args.overrides,
                              args.threads)

    phases.process_peak = max(phases.process_peak, peak_rss())
    return {
        "scale": scale.name,
        "command": " ".join(shlex.quote(a) for a in args.command),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hardware": machine,
        "dataset": {**describe_dataset(dataset, split, labeled), "generated_now": generated, "seed": args.seed},
        "plan": {"student_image_size": list(base.image_size), "reg_grid_shape": list(plan.reg.grid.shape),
                 "reg_grid_spacing_mm": list(plan.reg.grid.spacing)},
        "reg_net": {"checkpoint": str(reg_ckpt), "given": args.reg_ckpt is not None,
                    "steps": None if args.reg_ckpt is not None else args.reg_steps},
        "oracle": oracle,
        "steps": steps,
        "cctr_alone": alone,
        "peak_rss": {"process_bytes": phases.process_peak, "steps_phase_bytes": phases.records["steps"]["peak_rss_bytes"],
                     "data_generation_bytes": generator_peak, "rusage_children_bytes": children_peak_rss(),
                     "per_phase": phases.resettable},
        "phases": phases.records,
        "targets": asdict(scale),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.command = [sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    report = run(args)
    write_json(args.out / "scale.json", report)
    print(markdown(report))
    log(f"wrote {args.out / 'scale.json'}")
    return 0 if report["steps"]["same_batches"] else 1


if __name__ == "__main__":
    sys.exit(main())
