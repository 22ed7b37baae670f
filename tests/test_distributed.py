"""Data-parallel training under torchrun (seg.distributed): two gloo processes on the CPU train
the same students as one process with the same global batch.

What is exact: the two ranks train on disjoint halves of the very batch the single process
trains on, and every hook sees the whole batch, with the same outputs, on both ranks.
What is not: the soft Dice losses are pooled over the batch (and the contrastive loss draws
its anchors per batch), so the mean of two half-batch losses is not the whole-batch loss.
Tolerance: after 3 SGD steps, the norm of the weight difference between the two runs stays
under 15% of the norm of the single run's weight change (measured here: 2.2% for
supervised, 6.3% for cct, whose contrastive anchors are drawn per half-batch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cctr.seg.distributed import World, rows_of_rank, world_from_environment

ROOT = Path(__file__).resolve().parents[1]
JOB = Path(__file__).resolve().parent / "ddp_job.py"


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _students(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{s}.{k}": v.float() for s, sd in state["students"].items() for k, v in sd.items() if v.is_floating_point()}


@pytest.mark.parametrize("method", ["supervised", "cct"])
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path, method):
    _run([sys.executable, str(JOB), str(tmp_path / "start"), method, "1e-30"])   # the initial weights
    _run([sys.executable, str(JOB), str(tmp_path / "one"), method, "0.05"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(JOB),
          str(tmp_path / "two"), method, "0.05"])
    start = _students(tmp_path / "start" / "last.pt")
    one, two = _students(tmp_path / "one" / "last.pt"), _students(tmp_path / "two" / "last.pt")
    assert one.keys() == two.keys() == start.keys()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    gap = max(float((one[k] - two[k]).abs().max()) for k in one)
    ratio = _norm({k: one[k] - two[k] for k in one}) / _norm({k: one[k] - start[k] for k in one})
    print(f"{method}: largest change {moved:.3g}, largest gap {gap:.3g}, norm ratio {ratio:.1%}")
    assert moved > 1e-4 and ratio < 0.15, ratio

    single = json.loads((tmp_path / "one" / "probe-0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"probe-{r}.json").read_text()) for r in range(2)]
    for step, rows in enumerate(single["trained"]):
        halves = [r["trained"][step] for r in ranks]
        assert sorted(halves[0] + halves[1]) == sorted(rows)   # the two halves make up the whole batch
        assert ranks[0]["seen"][step] == ranks[1]["seen"][step] == rows   # hooks see the whole batch, in order
    assert ranks[0]["sums"] == ranks[1]["sums"]   # the same gathered outputs on both ranks
    assert not list((tmp_path / "two").glob("*.tmp*"))
    assert (tmp_path / "two" / "config.yaml").is_file()


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return sum(float((t ** 2).sum()) for t in tensors.values()) ** 0.5


def test_rows_of_rank_split_labeled_and_unlabeled_parts_and_cover_the_batch():
    rows = [rows_of_rank(4, 8, World(r, 2)).tolist() for r in range(2)]
    assert rows == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert sorted(sum(rows, [])) == list(range(8))
    assert rows_of_rank(2, 2, World(1, 2)).tolist() == [1]   # no unlabeled part


def test_the_world_comes_from_torchrun_variables():
    assert world_from_environment({}) == World(0, 1, 0)
    assert world_from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ValueError, match="RANK"):
        world_from_environment({"RANK": "2", "WORLD_SIZE": "2"})
