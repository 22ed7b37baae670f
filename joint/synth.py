"""Registration-synthesised labeled samples (``synth.*``, METHOD.md part 6).

RSL pairs an unlabeled image with the atlas label warped onto it, so the pair is only as right
as the registration. This hook warps the atlas IMAGE and its label through the same map, onto
the pixels of one of the step's unlabeled samples (its ``to_volume`` matrix, augmentation
included): the new sample has the unlabeled volume's shape as far as the registration found
it, the atlas's appearance, and a label right by construction up to interpolation, however
wrong the registration is. The students train on these samples with the supervised loss
times ``synth.weight`` (:class:`seg.hooks.ExtraSamples`); cross teaching, the contrastive
loss and the other hooks never see them.

Because the label's correctness does not rest on the registration, the validation gate
(:mod:`joint.gate`) does not close this term. With several atlases for a target (the
``fused`` policy) each sample takes one of them, in turn.

``synth.appearance='target'`` also carries the unlabeled sample's appearance: each class of the
synthesised image is shifted so that its median intensity is the target's median over the same
pixels (:func:`carry_appearance`). The registration then decides only a statistic per class, not
any pixel's label, so the pair stays right by construction while its intensities vary from
patient to patient as the unlabeled volumes do (a one-parameter stand-in for Zhao et al.'s
learned appearance model, METHOD.md part 6).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
from scipy import ndimage

from cctr.joint.oracle import RegistrationOracle
from cctr.reg.field import points_inside
from cctr.seg.hooks import ExtraSamples, TrainerHook
from cctr.seg.slices import AugmentConfig, SliceBatch, augment_intensity, sample_voxels

APPEARANCES = ("atlas", "target")
# A median over fewer pixels than this follows the noise, not the tissue: such a class keeps the
# atlas's intensities.
MIN_CLASS_PIXELS = 16


@dataclass(frozen=True)
class SynthConfig:
    """Options of the synthesised samples; nested as ``synth.*`` in :class:`joint.config.JointConfig`."""

    # weight 1, 2 samples, the atlas's appearance: chosen on the validation split, both phantoms;
    # 1 or 4 samples and the target's appearance lost (docs/RESULTS.md, "The registration as
    # augmentation" and "How many synthesised samples, and whose appearance")
    weight: float = 1.0   # factor of their supervised loss; 0 turns the term off
    samples: int = 2      # per step, made at the first unlabeled samples of the batch (at most all of them)
    appearance: str = "atlas"  # one of APPEARANCES: whose intensities the synthesised image has
    # the trainer's intensity augmentation (augment.contrast, augment.brightness) on the synthesised
    # images too, as the sampler applies it to every sample it draws
    augment: bool = False
    # false: the samples go through the pair's placement and pre-alignment only, the backend's
    # deformation dropped -- a control separating where the registration puts a slice from the
    # shape it gives it; it lost on validation (docs/RESULTS.md, "Where a slice goes or what
    # shape it takes")
    deformation: bool = True

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"synth.weight must be >= 0, got {self.weight}")
        if self.samples < 1:
            raise ValueError(f"synth.samples must be >= 1, got {self.samples}")
        if self.appearance not in APPEARANCES:
            raise ValueError(f"synth.appearance must be one of {APPEARANCES}, got {self.appearance!r}")


def carry_appearance(atlas_image: np.ndarray, label: np.ndarray, target_image: np.ndarray,
                     valid: np.ndarray, num_classes: int) -> np.ndarray:
    """The synthesised image with each class's intensities moved to the target's.

    All arguments are ``(H, W)`` on the sample's pixels: ``atlas_image`` and ``label`` are the
    atlas's image and label carried there, ``target_image`` is the unlabeled sample itself and
    ``valid`` marks pixels where both exist. Class ``c`` is shifted by ``median(target) -
    median(atlas)`` over its valid pixels one erosion step inside its boundary (where the
    registration is least likely to have put another tissue under it); a class with fewer such
    pixels than ``MIN_CLASS_PIXELS`` keeps the atlas's intensities. A shift per class keeps the
    atlas's texture and its edges, which coincide with the label's.
    """
    out = atlas_image.astype(np.float32, copy=True)
    for c in range(num_classes):
        region = label == c
        core = ndimage.binary_erosion(region) & valid
        if core.sum() >= MIN_CLASS_PIXELS:
            out[region] += float(np.median(target_image[core]) - np.median(atlas_image[core]))
    return out


class WarpedAtlasSamples(TrainerHook):
    """Adds ``cfg.samples`` atlas-image/atlas-label pairs per step, carried onto unlabeled samples.

    ``atlas_images``: atlas case id -> float32 ``(Z, Y, X)``, normalised as the trainer
    normalises its volumes, on the atlas's native grid (the labels come from the oracle's cases).
    With ``cfg.augment``, ``augment`` gives the contrast and brightness ranges (the trainer's;
    none: no intensity augmentation), drawn from a generator seeded by ``(seed, step)`` so a
    resumed run draws the same values without carrying a state.
    """

    name = "synth"

    def __init__(self, oracle: RegistrationOracle, atlas_images: Mapping[str, np.ndarray], cfg: SynthConfig,
                 augment: Optional[AugmentConfig] = None, seed: int = 0) -> None:
        missing = sorted(set(oracle.atlases) - set(atlas_images))
        if missing:
            raise ValueError(f"synthesised samples need the normalised image of every atlas; missing {missing}")
        self.oracle = oracle
        self.images = dict(atlas_images)
        self.cfg = cfg
        self.augment = augment if cfg.augment else None
        self.seed = seed
        self._metrics: dict[str, float] = {}

    def extra_samples(self, step: int, batch: SliceBatch) -> ExtraSamples:
        H, W = batch.image.shape[-2:]
        rows = torch.nonzero(~batch.is_labeled, as_tuple=False).flatten()[: self.cfg.samples].tolist()
        images, labels, inside = [], [], []
        rng = np.random.default_rng((self.seed, step)) if self.augment is not None else None
        for k, b in enumerate(rows):
            case_id = batch.case_id[b]
            atlases = self.oracle.atlases_for(case_id, step, int(batch.slice_index[b]))
            atlas = atlases[(step + k) % len(atlases)]
            voxels = sample_voxels(batch, b).numpy()
            fld = self.oracle.points_field(case_id, atlas, voxels, deformable=self.cfg.deformation)
            image = fld.warp_image(self.images[atlas]).reshape(H, W)
            label = fld.warp_labels(self.oracle.atlases[atlas].label, self.oracle.num_classes).reshape(H, W)
            on_atlas = fld.inside().reshape(H, W)
            if self.cfg.appearance == "target":
                on_target = points_inside(voxels, self.oracle.case(case_id).shape).reshape(H, W)
                image = carry_appearance(image, label, batch.image[b, 0].numpy(), on_atlas & on_target,
                                         self.oracle.num_classes)
            if rng is not None:
                image = augment_intensity(image, self.augment, rng)
            images.append(torch.from_numpy(image).reshape(1, H, W))
            labels.append(torch.from_numpy(label.astype(np.int64)))
            inside.append(float(on_atlas.mean()))
        self._metrics = {"inside": float(np.mean(inside))} if inside else {}
        return ExtraSamples(image=torch.stack(images) if images else torch.zeros((0, 1, H, W)),
                            label=torch.stack(labels) if labels else torch.zeros((0, H, W), dtype=torch.int64),
                            weight=self.cfg.weight)

    def metrics(self) -> dict[str, float]:
        """``inside``: the share of the synthesised pixels whose point falls inside the atlas
        (the rest is padding, image 0 and background, as the sampler pads)."""
        return dict(self._metrics)
