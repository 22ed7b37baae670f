"""Registration-synthesised labeled samples (``synth.*``; part of ``cctr+``, METHOD.md part 10).

RSL pairs an unlabeled image with the atlas label warped onto it, so the pair is only as right
as the registration. This hook warps the atlas IMAGE and its label through the same map (the
step's :class:`joint.guidance.Guidance`), onto the pixels of one of the step's unlabeled
samples (augmentation included): the new sample has the unlabeled volume's shape as far as the
registration found it, the atlas's appearance, and a label right by construction up to
interpolation, however wrong the registration is. The students train on these samples with the
supervised loss times ``synth.weight`` (:class:`seg.hooks.ExtraSamples`); cross teaching, the
contrastive loss and the other hooks never see them.

Because the label's correctness does not rest on the registration, the validation gate
(:mod:`joint.gate`) does not close this term. With several atlases for a target (the
``fused`` policy) each sample takes one of them, in turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from cctr.joint.guidance import Guidance
from cctr.seg.hooks import ExtraSamples, TrainerHook
from cctr.seg.options import option
from cctr.seg.slices import SliceBatch


@dataclass(frozen=True)
class SynthConfig:
    """Options of the synthesised samples; nested as ``synth.*`` in :class:`joint.config.JointConfig`.

    Weight 1 and 2 samples per step were chosen on the validation split of both phantoms
    (docs/RESULTS.md, option table); 0 turns the term off (the paper's ``cctr``).

    Raises
    ------
    ValueError
        When ``weight`` is negative or ``samples`` is below 1.
    """

    weight: float = option(1.0, "weight of the synthesised samples' supervised loss; 0 turns them off")
    samples: int = option(2, "synthesised samples per step, at the batch's first unlabeled samples")

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"synth.weight must be >= 0, got {self.weight}")
        if self.samples < 1:
            raise ValueError(f"synth.samples must be >= 1, got {self.samples}")


class WarpedAtlasSamples(TrainerHook):
    """Adds ``cfg.samples`` atlas-image/atlas-label pairs per step, carried onto unlabeled samples.

    Parameters
    ----------
    guidance : Guidance
        The run's registration guidance, shared with the other registration-guided hooks.
    atlas_images : mapping of str to numpy.ndarray
        Atlas case id -> float32 ``(Z, Y, X)``, normalised as the trainer normalises its
        volumes, on the atlas's native grid (the labels come from the oracle's cases).
    cfg : SynthConfig
        Weight and number of the samples.

    Raises
    ------
    ValueError
        When an atlas of the oracle has no image in ``atlas_images``.
    """

    name = "synth"

    def __init__(self, guidance: Guidance, atlas_images: Mapping[str, np.ndarray], cfg: SynthConfig) -> None:
        oracle = guidance.oracle
        missing = sorted(set(oracle.atlases) - set(atlas_images))
        if missing:
            raise ValueError(f"synthesised samples need the normalised image of every atlas; missing {missing}")
        self.guidance = guidance
        self.images = dict(atlas_images)
        self.cfg = cfg
        self._metrics: dict[str, float] = {}

    def extra_samples(self, step: int, batch: SliceBatch) -> ExtraSamples:
        """The atlas image and label carried onto the first ``cfg.samples`` unlabeled samples.

        Sample ``k`` takes atlas ``(step + k) mod n`` of its ``n`` atlases.

        Parameters
        ----------
        step : int
            The training step.
        batch : SliceBatch
            The step's samples ``(B, 1, H, W)``, on the CPU.

        Returns
        -------
        ExtraSamples
            ``image`` float32 ``(S, 1, H, W)`` and ``label`` int64 ``(S, H, W)`` in sample pixels,
            ``S = min(cfg.samples, unlabeled rows)`` (possibly 0); 0 (image) and background
            (label) outside the atlas, as the sampler pads; ``weight`` = ``cfg.weight``.
        """
        H, W = batch.image.shape[-2:]
        oracle = self.guidance.oracle
        guides = self.guidance.of_batch(step, batch)
        images, labels, inside = [], [], []
        for k, b in enumerate(sorted(guides)[: self.cfg.samples]):
            guide = guides[b]
            pick = (step + k) % len(guide.atlas_ids)
            atlas, fld = guide.atlas_ids[pick], guide.fields[pick]
            image = fld.warp_image(self.images[atlas]).reshape(H, W)
            label = fld.warp_labels(oracle.atlases[atlas].label, oracle.num_classes).reshape(H, W)
            images.append(torch.from_numpy(image).reshape(1, H, W))
            labels.append(torch.from_numpy(label.astype(np.int64)))
            inside.append(float(fld.inside().mean()))
        self._metrics = {"inside": float(np.mean(inside))} if inside else {}
        return ExtraSamples(image=torch.stack(images) if images else torch.zeros((0, 1, H, W)),
                            label=torch.stack(labels) if labels else torch.zeros((0, H, W), dtype=torch.int64),
                            weight=self.cfg.weight)

    def metrics(self) -> dict[str, float]:
        """Figures of the last :meth:`extra_samples`.

        Returns
        -------
        dict of str to float
            ``inside``: the share of the synthesised pixels whose point falls inside the atlas
            (the rest is padding, image 0 and background, as the sampler pads); empty when no
            sample was made.
        """
        return dict(self._metrics)
