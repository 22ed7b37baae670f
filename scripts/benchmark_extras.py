"""Two readings of a finished benchmark that its tables do not carry (docs/RESULTS.md cites both).

``walltimes OUT``: each method's training wall time per run, first to last logged TensorBoard
event, mean ± sample std over the runs of labeled set 1 (scoring excluded), and each
registration net's in ``OUT/reg``.

``suggest-check SUGGEST_DIR...``: for folders ``cctr suggest`` wrote on a phantom (which keeps
the pool's labels), the Spearman correlation of the score with the pool patients' true error
(1 - ``diagnostic_true_dice``) and the rank of each pick's true error (1: the worst-segmented
patient). A diagnostic of the choice only: nothing here feeds back into it.
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from scipy.stats import spearmanr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def wall_seconds(tb_dir: Path) -> float:
    """Seconds between the first and the last scalar event of a TensorBoard folder."""
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    times = [e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    if not times:
        raise SystemExit(f"{tb_dir}: no scalar events")
    return max(times) - min(times)


def walltimes(out: Path) -> None:
    for method_dir in sorted(p for p in (out / "runs").glob("*/*") if (p / "labeled-1").is_dir()):
        walls = [wall_seconds(tb) for tb in sorted(method_dir.glob("labeled-1/draw-*/seed-*/tb"))]
        if walls:
            spread = f" ± {statistics.stdev(walls):.0f}" if len(walls) > 1 else ""
            print(f"{method_dir.relative_to(out / 'runs')}: {len(walls)} run(s), "
                  f"{statistics.mean(walls):.0f}{spread} s")
    nets = [wall_seconds(tb) for tb in sorted((out / "reg").glob("*/tb"))]
    print("registration nets: " + (", ".join(f"{w:.0f} s" for w in nets) or "none"))


def suggest_check(folders: list[Path]) -> None:
    for folder in folders:
        path = folder / "suggest.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: not found; give folders `cctr suggest` wrote")
        rows = list(csv.DictReader(path.open()))
        if not rows or not rows[0].get("diagnostic_true_dice"):
            raise SystemExit(f"{path}: no diagnostic_true_dice column (the dataset keeps no pool labels)")
        errors = [1.0 - float(r["diagnostic_true_dice"]) for r in rows]
        rho = spearmanr([float(r["score"]) for r in rows], errors).correlation
        worst_first = sorted(errors, reverse=True)
        picks = [worst_first.index(1.0 - float(r["diagnostic_true_dice"])) + 1 for r in rows if r["pick"]]
        print(f"{folder}: pool {len(rows)}, Spearman(score, true error) {rho:.3f}, picks' error ranks {picks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("walltimes").add_argument("out", type=Path, help="a cctr benchmark --out folder")
    verbs.add_parser("suggest-check").add_argument("folders", type=Path, nargs="+", help="cctr suggest --out folders")
    args = parser.parse_args()
    walltimes(args.out) if args.verb == "walltimes" else suggest_check(args.folders)


if __name__ == "__main__":
    main()
