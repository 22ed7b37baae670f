"""Can a training configuration run at all on this machine? The student input size must be
positive (a bad value), and one step's memory, estimated before any data is read, must fit what the device
has free: a batch of 100,000 slices would otherwise swap the machine for hours or be killed
without a word.

The estimate is rough on purpose and errs low: each student runs forward once on one sample
at ``image_size`` while autograd's saved-tensor hook adds up what the backward pass will need;
that, times the samples of a step, plus the weights, their gradients and two optimiser
buffers of both students, is the step's memory. Allocator slack, the data and the
validation are left out, so a refused batch is surely too large; one that passes may still be.

:class:`ImpossibleConfigError` is the refusal (the command line gives it exit status 78).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

GIB = 1024 ** 3


class ImpossibleConfigError(ValueError):
    """Options valid one by one that cannot run together or on this machine."""


def check_image_size(image_size: Sequence[int]) -> None:
    """Refuse an ``image_size`` that is not two positive sides (a bad value: ``ValueError``)."""
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise ValueError(f"image_size {tuple(image_size)} must be two positive sides (H, W), e.g. [64,64]")


def sample_bytes(model, image_size: Sequence[int]) -> int:
    """Bytes autograd keeps for the backward pass of ``model`` on one ``(1, 1, H, W)`` sample."""
    import torch

    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.zeros(1, 1, int(image_size[0]), int(image_size[1])))
        # the outputs themselves stay alive until the losses are computed
        saved += sum(t.numel() * t.element_size() for t in (out.logits, out.features, out.embedding))
    return saved


def parameter_bytes(model) -> int:
    """Weights, their gradients and two optimiser buffers (Adam's moments; SGD's momentum is one)."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def step_bytes(models: Sequence, image_size: Sequence[int], samples: int) -> int:
    """Estimated bytes of one training step of ``models`` on ``samples`` slices each."""
    return sum(samples * sample_bytes(m, image_size) + parameter_bytes(m) for m in models)


def available_bytes(device: str) -> Optional[int]:
    """Free memory of ``device``: the GPU's free memory, or the system's available memory for
    the CPU (``MemAvailable``); ``None`` when it cannot be told."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_step_memory(models: Sequence, image_size: Sequence[int], labeled_batch: int, unlabeled_batch: int,
                      device: str, available: Optional[int] = None) -> int:
    """Refuse a batch whose estimated step memory exceeds what ``device`` has free
    (``available``: that figure, measured here when not given). Returns the estimate in bytes."""
    samples = labeled_batch + unlabeled_batch
    need = step_bytes(models, image_size, samples)
    free = available_bytes(device) if available is None else available
    if free is not None and need > free:
        per_sample = max(1, (need - sum(parameter_bytes(m) for m in models)) // max(samples, 1))
        fits = max(0, int((free - sum(parameter_bytes(m) for m in models)) // per_sample))
        raise ImpossibleConfigError(
            f"labeled_batch {labeled_batch} + unlabeled_batch {unlabeled_batch} slices of {tuple(image_size)} need "
            f"about {need / GIB:.1f} GiB per training step, more than the {free / GIB:.1f} GiB free on {device}; "
            f"about {fits} slices per step fit: lower the batch or image_size")
    return need


def check_training_memory(student_configs: Sequence, num_classes: int, embedding_dim: int, image_size: Sequence[int],
                          labeled_batch: int, unlabeled_batch: int, device: str) -> int:
    """:func:`check_step_memory` for freshly built students of ``student_configs`` (built and
    run without touching the global random state, so a run is the same with or without it)."""
    import torch

    from cctr.seg.students import build_student

    with torch.random.fork_rng(devices=[]):
        models = [build_student(c, num_classes, embedding_dim) for c in student_configs]
        return check_step_memory(models, image_size, labeled_batch, unlabeled_batch, device)
