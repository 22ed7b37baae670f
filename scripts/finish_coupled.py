"""The closing phase of ``cctr-coupled`` (``coupled.final_steps``, docs/METHOD.md part 9) run on
a FINISHED run, to choose its length on validation without training the students again.

    python scripts/finish_coupled.py --data DATA --run RUN --steps 100,200,400 [--out DIR]

The run's ``last.pt`` holds the registration hook's whole state after its last step (both nets,
the optimiser, the RNG, the students' labels of the unlabeled volumes), so continuing it here
with N registration steps gives exactly the net a run with ``coupled.final_steps=N`` ends
with (the students, and so their scores, do not change: the phase comes after their last
step). For each N of ``--steps`` (cumulative: one phase, scored on the way) the script writes
``DIR/final-N.pt`` (``learned:`` reads it; ``cctr reg eval`` scores it on test pairs) and a row
of the hook's validation diagnostics: ``atlas_dice`` (the atlas labels warped onto the
validation volumes) and ``val_pair_dice`` (validation volumes onto each other), in
``DIR/validation.csv``. N = 0 is the run's own net.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from cctr.joint.config import JointConfig
from cctr.joint.coupled import CoupledRegistration
from cctr.seg.config import from_dict
from cctr.joint.app.commands.reg import data_args, open_data
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.split import Split
from cctr.seg.inference import read_checkpoint_dict
from cctr.seg.train_data import load_train_data


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_args(p)   # the dataset (and split) the run trained on
    p.add_argument("--run", type=Path, required=True, help="a finished cctr-coupled run folder (config.yaml, last.pt)")
    p.add_argument("--steps", default="100,200,400", help="comma-separated phase lengths to score and save")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/reg/finish)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one per process on a shared CPU)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def phase_lengths(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise SystemExit(f"--steps: comma-separated integers, got {text!r}") from exc
    if not values or values[0] < 1:
        raise SystemExit(f"--steps: give positive phase lengths, got {text!r}")
    return values


def load_hook(dataset: Dataset, split: Split, run: Path) -> CoupledRegistration:
    """The run's registration hook, in the state its last checkpoint saved."""
    last = Path(run) / "last.pt"
    if not last.is_file():
        raise SystemExit(f"{run}: no last.pt; give the folder of a finished cctr-coupled run")
    checkpoint = read_checkpoint_dict(last, ("config", "hooks", "step"))
    cfg = from_dict(checkpoint["config"], JointConfig(), where=str(last))
    if cfg.method != "cctr-coupled":
        raise SystemExit(f"{last}: a {cfg.method!r} run; the closing phase belongs to cctr-coupled")
    if int(checkpoint["step"]) != cfg.iterations:
        raise SystemExit(f"{last}: the run stopped at step {checkpoint['step']} of {cfg.iterations}; finish it first")
    data = load_train_data(dataset, split, cfg.labeled)
    hook = CoupledRegistration.from_spec(cfg.oracle.backend, cfg.coupled, data.labeled, data.unlabeled, data.val,
                                         len(data.class_names), seed=cfg.seed)
    try:
        hook.load_state_dict(checkpoint["hooks"][hook.name])
    except (KeyError, RuntimeError) as exc:
        raise SystemExit(f"{last}: its registration state does not fit {dataset.root} and its split "
                         f"({type(exc).__name__}: {exc}); give the dataset the run trained on") from exc
    return hook


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    lengths = phase_lengths(args.steps)
    torch.set_num_threads(args.threads)
    try:
        hook = load_hook(*open_data(args), args.run)
    except (FileNotFoundError, ValueError) as exc:   # CaseError is a ValueError: it names the file
        raise SystemExit(f"error: {exc}") from exc
    out = args.out or args.run / "reg" / "finish"
    out.mkdir(parents=True, exist_ok=True)
    rows, done = [], 0
    for n in [0, *lengths]:
        if n > done:
            hook.finish(n - done)
            done = n
        scores = hook.validate(n, {})
        rows.append({"final_steps": n, **{k: f"{scores[k]:.4f}" for k in ("atlas_dice", "val_pair_dice") if k in scores}})
        print(f"final_steps {n}: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "final_steps"), flush=True)
        if n:
            hook.save(out / f"final-{n}.pt")
    with open(out / "validation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'validation.csv'} and final-N.pt for N in {lengths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
