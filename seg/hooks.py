"""The trainer's one extension protocol: :class:`TrainerHook`.

A method that needs more than the base losses (supervised, cross teaching, pixel contrast)
hands the trainer a tuple of hooks (``Method.build_hooks``; ``train(hooks=...)`` adds more).
Every hook has every method below with a no-op default, so the trainer calls them all
unconditionally and a hook overrides only what it does. Per step, in this order:

0. ``extra_samples(step, batch)``: labeled samples the hook makes for this step
   (:class:`ExtraSamples`, e.g. an atlas image and its label carried onto an unlabeled
   volume's shape). The students see them in the same forward pass as the batch, and each
   student gets ``weight * supervised loss`` on them as ``loss/<student>/<hook name>``; no
   other term or hook sees them, so ``outputs`` below always has the batch's rows only;
1. ``losses(step, batch, outputs)``: extra loss terms, ``{student name: weighted scalar}``,
   added to the total the students are optimised on;
2. ``extra_positive(step, batch, outputs, student, anchors)``: once the pixel contrastive loss
   has drawn its anchors, an extra positive key for each of that student's anchors
   (:class:`seg.losses.PartAnchors` in, :class:`seg.losses.ExtraKeys` out; at most one hook
   may give one per student);
3. ``inspect_losses(step, batch, outputs, losses)``: a read-only look at every weighted term
   (base and hooks', keyed as logged) before ``backward()``, with the graph still alive, so a
   diagnostic may take ``torch.autograd.grad(term, outputs, retain_graph=True)``; it must not
   change the terms, the outputs or any RNG the training draws from;
4. after the students' optimiser step, ``after_step(step, batch, detached_outputs)``: work
   on detached outputs (refresh a memory bank, take a step of the hook's OWN optimiser);
5. ``metrics()``: scalars to log for this step, under ``<hook name>/<key>``.

At each validation ``validate(step, scores)`` sees the students' validation scores
(``{student: {"dice": ..., "hd95": ..., "dice_<class>": ...}}``, as :func:`seg.validation.validate`
computes them) and returns scalars logged under ``val_<hook name>/<key>``.
``state_dict()`` / ``load_state_dict()`` put the hook's state (banks, a second network and
its optimiser, RNGs) in every checkpoint so resume stays exact; ``checkpoint(out_dir,
best)`` lets a hook write its own files next to the students' (e.g. ``reg/last.pt``).

Layouts: ``batch`` is a :class:`seg.slices.SliceBatch` on the CPU; ``outputs`` maps student
name to :class:`seg.students.StudentOutput` on the students' device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

from cctr.seg.losses import ExtraKeys, PartAnchors
from cctr.seg.slices import SliceBatch
from cctr.seg.students import StudentOutput

Outputs = Mapping[str, StudentOutput]


@dataclass(frozen=True)
class ExtraSamples:
    """Labeled samples a hook adds to one step (S may be 0), in the batch's sample layout.

    ``image``: float32 ``(S, 1, H, W)``, normalised as the batch's images are.
    ``label``: int64 ``(S, H, W)``, background (0) where the sample has no content, as the
    sampler pads real labeled samples.
    ``weight``: the factor of their supervised loss this step.
    """

    image: torch.Tensor
    label: torch.Tensor
    weight: float

    def __post_init__(self) -> None:
        S = self.image.shape[0]
        if self.image.ndim != 4 or self.image.shape[1] != 1 or tuple(self.label.shape) != (S, *self.image.shape[2:]):
            raise ValueError(f"extra samples need image (S, 1, H, W) and label (S, H, W), got "
                             f"{tuple(self.image.shape)} and {tuple(self.label.shape)}")


class TrainerHook:
    """Base class of every trainer extension; see the module docstring for the call order."""

    #: labels the hook's losses (``loss/<student>/<name>``), metrics and checkpoint state
    name: str = "hook"
    #: under torchrun, whether ``after_step`` must see the whole global batch (gathered from
    #: every process, at a communication cost) so that its state agrees on every process, as a
    #: memory bank or a second network must; otherwise it sees this process's share
    sees_whole_batch: bool = False

    def extra_samples(self, step: int, batch: SliceBatch) -> Optional[ExtraSamples]:
        return None

    def losses(self, step: int, batch: SliceBatch, outputs: Outputs) -> dict[str, torch.Tensor]:
        return {}

    def extra_positive(self, step: int, batch: SliceBatch, outputs: Outputs, student: str,
                       anchors: PartAnchors) -> Optional[ExtraKeys]:
        return None

    def inspect_losses(self, step: int, batch: SliceBatch, outputs: Outputs, losses: Mapping[str, torch.Tensor]) -> None:
        return None

    def after_step(self, step: int, batch: SliceBatch, outputs: Outputs) -> None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def validate(self, step: int, scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return {}

    def checkpoint(self, out_dir: Path, best: bool) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        return None


def check_names(hooks: tuple[TrainerHook, ...]) -> None:
    """Refuse hooks that share a name: their losses, metrics and saved state would collide."""
    names = [h.name for h in hooks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"trainer hooks need distinct names; repeated: {dup}")
