"""A tiny training run for tests/test_distributed.py, started either directly or by torchrun:
``python tests/ddp_job.py OUT METHOD LR`` (SGD, so a weight's change is proportional to its
gradient). A probe hook writes what each rank trained on and what its hooks saw to
``OUT/probe-<rank>.json``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_seg_train import _cfg, _dataset  # noqa: E402

from cctr.seg.hooks import TrainerHook  # noqa: E402
from cctr.seg.train import train  # noqa: E402


class Probe(TrainerHook):
    name = "probe"
    sees_whole_batch = True

    def __init__(self) -> None:
        self.trained, self.seen, self.sums = [], [], []

    def losses(self, step, batch, outputs):
        self.trained.append([[c, int(z)] for c, z in zip(batch.case_id, batch.slice_index)])
        return {}

    def after_step(self, step, batch, outputs):
        self.seen.append([[c, int(z)] for c, z in zip(batch.case_id, batch.slice_index)])
        self.sums.append([float(o.embedding.double().sum()) for o in outputs.values()])


def main(out: str, method: str, lr: float) -> None:
    torch.set_num_threads(1)
    dataset, split = _dataset(Path(out).parent)
    cfg = _cfg(Path(out), method=method, iterations=3, val_every=3, labeled_batch=2,
               unlabeled_batch=2, optimizer="sgd", lr=lr)
    probe = Probe()
    train(cfg, dataset, split, hooks=(probe,), progress=False)
    rank = os.environ.get("RANK", "0")
    (Path(out) / f"probe-{rank}.json").write_text(json.dumps(
        {"trained": probe.trained, "seen": probe.seen, "sums": probe.sums}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
