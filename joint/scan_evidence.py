"""What a trained run and a registration say about one scan, without its label: the evidence
that ``cctr suggest`` ranks scans by and that ``cctr predict``'s quality control turns into an
estimated Dice.

For each target scan:

- ``students_dice``: the 3D Dice (mean over foreground classes) between student A's and
  student B's predictions. Two different networks agree where both learned the anatomy, so
  a low value marks a scan the run has not learned (None for a one-student checkpoint);
- ``atlas_fit_a`` / ``atlas_fit_b``: the Dice between each student's prediction and the label
  of the best-fitting atlas (a labeled scan) warped onto the target by the registration: how
  well what is known fits what the students see (None without a registration);
- ``deformation_mm``, ``dissimilarity`` and ``distance`` to the nearest atlas: how far the
  scan lies from the labeled ones under registration (:class:`PairDistance`).

Atlases are :class:`~seg.data.case.Case` objects with labels, registered (as MOVING) onto each
target (FIXED) through a :class:`joint.oracle.RegistrationOracle`, so the Fields a training run
already cached on disk are read, not recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from cctr.joint.oracle import RegistrationOracle
from cctr.reg.backends import LEARNED_BATCH, Backend
from cctr.reg.field import CanonicalField
from cctr.seg.data.case import Case
from cctr.seg.inference import TrainedStudents
from cctr.seg.metrics import mean_foreground_dice

# fixed slices warped at a time when an atlas image is resampled onto a whole target
SLAB_SLICES = 8


@dataclass(frozen=True)
class PairDistance:
    """How far a fixed scan lies from a moving one under a registration.

    ``deformation_mm``: mean length in mm of the deformable part of the map (the canonical
    displacement, so the pre-alignment's rotation and shift are not counted: a scan turned
    in the scanner is not anatomically far). ``dissimilarity``: 1 - normalised cross-correlation
    of the fixed image and the moving image warped onto it, over the voxels the moving volume
    covers (what is left unexplained after registration)."""

    deformation_mm: float
    dissimilarity: float


@dataclass(frozen=True)
class ScanEvidence:
    """The label-free evidence about one scan (module docstring); None where the run or the
    registration cannot give a value."""

    case_id: str
    patient_id: str
    students_dice: Optional[float]
    atlas_fit_a: Optional[float]
    atlas_fit_b: Optional[float]
    distances: Mapping[str, PairDistance]   # atlas case id -> the pair's distance (empty without registration)


def deformation_mm(fld: CanonicalField, fixed_spacing: Sequence[float]) -> float:
    """Mean length in mm of the canonical displacement of ``fld``, measured on the fixed grid:
    each canonical step is mapped to fixed native voxels (the linear part of
    ``fixed_to_native``) and scaled by the fixed spacing."""
    to_mm = np.diag(np.asarray(fixed_spacing, float)) @ fld.fixed_to_native[:3, :3]
    disp = fld.disp.astype(np.float32).reshape(3, -1)
    return float(np.linalg.norm(to_mm @ disp, axis=0).mean())


def dissimilarity(fld: CanonicalField, fixed_image: np.ndarray, moving_image: np.ndarray) -> float:
    """1 - NCC of ``fixed_image`` and ``moving_image`` warped through ``fld``, over the fixed
    voxels that land inside the moving volume; 1 when fewer than two do or either is flat."""
    # the moments of both images, summed slab by slab so no whole warped volume is held
    sums = np.zeros(5)   # n, sum f, sum m, sum f^2, sum m^2
    fm = 0.0             # sum f * m
    Z = fld.fixed_shape[0]
    for start in range(0, Z, SLAB_SLICES):
        slab = fld.slab(start, min(start + SLAB_SLICES, Z))
        inside = slab.inside()
        f = fixed_image[start:start + inside.shape[0]][inside].astype(np.float64)
        m = slab.warp_image(moving_image)[inside].astype(np.float64)
        sums += (f.size, f.sum(), m.sum(), (f * f).sum(), (m * m).sum())
        fm += float((f * m).sum())
    n, sf, sm, sff, smm = sums
    if n < 2:
        return 1.0
    var_f, var_m = sff - sf * sf / n, smm - sm * sm / n
    if var_f <= 0 or var_m <= 0:
        return 1.0
    return float(1.0 - (fm - sf * sm / n) / np.sqrt(var_f * var_m))


def pair_distance(fld: CanonicalField, fixed: Case, moving: Case) -> PairDistance:
    return PairDistance(deformation_mm(fld, fixed.spacing), dissimilarity(fld, fixed.image, moving.image))


def register_pairs(backend: Backend, pairs: Sequence[tuple[Case, Case]]) -> list[PairDistance]:
    """The :class:`PairDistance` of each (fixed, moving) pair, registered by ``backend`` in
    process and not cached: the pairs between two unlabeled scans, which no oracle holds
    (an oracle's moving volumes are atlases with labels)."""
    out: list[PairDistance] = []
    for start in range(0, len(pairs), LEARNED_BATCH):
        chunk = pairs[start:start + LEARNED_BATCH]
        fields = backend.register_many([(f.image, f.spacing, m.image, m.spacing) for f, m in chunk])
        out.extend(pair_distance(fld, f, m) for fld, (f, m) in zip(fields, chunk))
    return out


def student_labels(trained: TrainedStudents, image: np.ndarray) -> dict[str, np.ndarray]:
    """Each student's uint8 label map of ``image`` (a constant image: all background, as
    ``cctr predict`` writes it)."""
    if image.min() == image.max():
        return {s: np.zeros(image.shape, np.uint8) for s in trained.students}
    return {s: trained.predict(image.astype(np.float32), s) for s in sorted(trained.students)}


def _best_fit(prediction: np.ndarray, warped: Mapping[str, np.ndarray], num_classes: int) -> float:
    return max(mean_foreground_dice(prediction, w, num_classes) for w in warped.values())


def scan_evidence(case: Case, labels: Mapping[str, np.ndarray], num_classes: int,
                  oracle: Optional[RegistrationOracle] = None) -> ScanEvidence:
    """The evidence of ``case`` from its students' ``labels`` ('a' and maybe 'b') and, with an
    ``oracle`` whose targets include ``case``, every atlas warped onto it."""
    agree = mean_foreground_dice(labels["a"], labels["b"], num_classes) if "b" in labels else None
    if oracle is None:
        return ScanEvidence(case.case_id, case.patient_id, agree, None, None, {})
    warped = {a: oracle.warped_label(case.case_id, (a,)) for a in oracle.atlas_ids}
    fields = dict(zip(oracle.atlas_ids, oracle.many_fields([(case.case_id, a) for a in oracle.atlas_ids])))
    distances = {a: pair_distance(fields[a], case, oracle.atlases[a]) for a in oracle.atlas_ids}
    fit_b = _best_fit(labels["b"], warped, num_classes) if "b" in labels else None
    return ScanEvidence(case.case_id, case.patient_id, agree, _best_fit(labels["a"], warped, num_classes), fit_b,
                        distances)


def gather_evidence(cases: Sequence[Case], trained: TrainedStudents, oracle: Optional[RegistrationOracle],
                    progress: bool = True, visit: Optional[Callable[[Case, Mapping[str, np.ndarray]], None]] = None
                    ) -> dict[str, ScanEvidence]:
    """The evidence of every case (the oracle warmed over them first). ``visit(case, labels)``
    sees each case's student label maps before they are dropped (to write or score them), so
    memory does not grow with the pool."""
    if oracle is not None:
        oracle.warm([c.case_id for c in cases], progress=progress)
    evidence = {}
    num_classes = len(trained.class_names)
    for case in tqdm(cases, desc="students and atlases", unit="volume", disable=None if progress else True):
        labels = student_labels(trained, case.image)
        evidence[case.case_id] = scan_evidence(case, labels, num_classes, oracle)
        if visit is not None:
            visit(case, labels)
    return evidence
