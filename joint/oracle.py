"""The registration oracle: Fields between target volumes and atlas volumes, on demand.

Roles: an *atlas* is a labeled volume L (the MOVING image), a *target* is a volume U whose
voxels need a corresponding point in L (the FIXED image: unlabeled training volumes for RSL
and REPS, validation/test volumes for the registration-only baseline). A Field of the pair
maps every voxel of U's native grid to a point of L's native grid, as in :mod:`reg.field`.

The oracle owns, for one backend (built once by the caller from the run's typed spec and
shared, e.g. with the validation gate):

- computing Fields (kept compact, :class:`reg.field.CanonicalField`: a canonical displacement
  plus two placements, so a pair costs the same few hundred kB on any native grid): in process and batched under ``no_grad`` for the learned backend (and
  the trivial identity), in worker processes of one thread each for classical backends;
- caching them: in memory, least-recently-used and bounded in bytes, and optionally on disk
  under a key of (backend spec and parameters, content hash of both volumes), written
  atomically so an interrupted run leaves no half file and a second run reuses every pair
  (the caches themselves: :mod:`joint.field_cache`);
- the atlas labels warped onto given points of a target (soft one-hot, plus the agreement
  of the atlases): what a training step reads, at the pixels of its samples only, so its cost
  does not grow with the native grid; a whole target's warped label is computed slab by
  slab;
- sharing the work of warming among the processes of a torchrun job: each computes its share
  of the pairs into the disk cache and reads the others' from it;
- being told that its backend changed (:meth:`RegistrationOracle.invalidate`: a registration
  net that keeps training, :mod:`joint.coupled`): both memory caches are dropped, the
  ``version`` counts up, and every pair is recomputed lazily, only when a step asks for it;
  such a backend never uses the disk cache;
- the atlas policy: which atlas(es) guide a target at a given step ('random', seeded per
  step; 'similar', the atlas whose image is most like the target's by NCC on a canonical
  grid; 'fused', a vote over every atlas).
"""
from __future__ import annotations

import multiprocessing
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cctr.joint.field_cache import (ByteLRU, CorruptCacheEntry, backend_fingerprint, load_field, pair_key, quarantine,
                               save_field, volume_digest)
from cctr.reg.backends import LEARNED_BATCH, Backend, load_backend
from cctr.reg.field import CanonicalField, Field, points_inside
from cctr.reg.placement import FrontEnd
from cctr.reg.spec import BackendSpec
from cctr.seg.data.case import Case, CaseError
from cctr.seg.options import option

POLICIES = ("random", "similar", "fused")
# canonical (Z, Y, X) grid on which 'similar' compares images
SIMILARITY_SHAPE = (16, 64, 64)


@dataclass(frozen=True)
class OracleConfig:
    """The oracle's options; nested as ``oracle.*`` in :class:`joint.config.JointConfig`.

    ``backend`` is the spec as written (YAML, ``--reg-backend``); it is parsed once, here, into
    :attr:`spec`, which is what everything else reads."""

    backend: str = option("", "registration backend spec (learned:CKPT[?refine=N], sitk-demons, ants-syn, identity)")
    policy: str = option("random", "atlas guiding each unlabeled volume: 'random' per step, 'similar' or 'fused'")
    cache: str = option("", "folder of cached Fields, shared across runs; '' = no disk cache")
    field_memory_mb: float = option(1024.0, "memory bound of the in-memory Field cache, MB")
    workers: int = option(2, "processes computing classical backends' Fields; <= 1 = in process")

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"oracle.policy must be one of {POLICIES}, got {self.policy!r}")
        if self.field_memory_mb < 0:
            raise ValueError("oracle.field_memory_mb must be >= 0")
        object.__setattr__(self, "_spec", BackendSpec.parse(self.backend) if self.backend else None)

    @property
    def spec(self) -> Optional[BackendSpec]:
        """The parsed backend; None when none was given."""
        return self._spec  # type: ignore[attr-defined]

    @property
    def disk_cache(self) -> Optional[Path]:
        return Path(self.cache) if self.cache else None


@dataclass(frozen=True)
class WarpedAtlas:
    """Atlas labels carried onto a slab of slices of one target's native grid, ``(Zs, Y, X)``,
    or onto N points of it, ``(N,)``.

    ``probs``: float16 ``(C, Zs, Y, X)`` or ``(C, N)``, the mean over atlases of each atlas's soft one-hot
    (each sums to 1 where the target voxel falls inside that atlas, 0 outside).
    ``agreement``: float16 ``(Zs, Y, X)`` or ``(N,)``, the fraction of atlases whose own argmax equals the
    argmax of ``probs`` (0 where a voxel falls outside every atlas).
    """

    atlas_ids: tuple[str, ...]
    probs: np.ndarray
    agreement: np.ndarray

    def hard_label(self) -> np.ndarray:
        """uint8, the shape of ``agreement``: the argmax of the vote (the registration-only prediction)."""
        return self.probs.argmax(axis=0).astype(np.uint8)


def _one_thread_worker() -> None:
    """Process-pool initializer: each worker computes with one thread, the pool gives the parallelism."""
    torch.set_num_threads(1)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _register_pair(spec: BackendSpec, frontend: FrontEnd, fixed: np.ndarray, fixed_spacing: tuple, moving: np.ndarray,
                   moving_spacing: tuple) -> CanonicalField:
    return load_backend(spec, frontend).register(fixed, fixed_spacing, moving, moving_spacing)


def canonical_ncc(a_zyx: np.ndarray, b_zyx: np.ndarray, shape_zyx: Sequence[int]) -> float:
    """Normalised cross-correlation of two volumes after resampling both to ``shape_zyx``.

    Resampling to one grid makes volumes of different sizes comparable; intensities are
    standardised per volume, so scanner gain does not matter.
    """
    def canon(v: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(v, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=tuple(shape_zyx), mode="trilinear", align_corners=True).flatten()
        return (t - t.mean()) / (t.std() + 1e-6)

    return float((canon(a_zyx) * canon(b_zyx)).mean())


class RegistrationOracle:
    """Fields and warped atlas labels between ``targets`` and ``atlases`` from one ``backend``
    (:func:`reg.backends.load_backend`; Fields are keyed on disk by its ``params``).

    ``atlases`` must carry labels; ``targets`` need not. A classical backend's pairs are
    computed in ``cfg.workers`` processes, each rebuilding it from its spec and front end.
    ``seed`` seeds the 'random' policy.
    """

    def __init__(self, atlases: Sequence[Case], targets: Sequence[Case], backend: Backend, cfg: OracleConfig,
                 seed: int = 0) -> None:
        if not atlases:
            raise CaseError("registration oracle: no labeled (atlas) case given")
        for case in atlases:
            if case.label is None:
                raise CaseError(f"registration oracle: atlas {case.case_id!r} has no label")
        num_classes = {case.num_classes for case in atlases}
        if len(num_classes) != 1:
            raise CaseError(f"registration oracle: atlases disagree on the class count: {sorted(num_classes)}")
        self.cfg = cfg
        self.seed = int(seed)
        self.backend = backend
        self.atlases = {c.case_id: c for c in atlases}
        self.targets = {c.case_id: c for c in targets}
        self.num_classes = num_classes.pop()
        self.atlas_ids = tuple(self.atlases)
        self._fingerprint = backend_fingerprint(self.backend)
        self._digests: dict[str, str] = {}
        self.fields = ByteLRU[CanonicalField](int(cfg.field_memory_mb * 2**20), lambda f: f.nbytes)
        self._similar: dict[str, str] = {}
        self.version = 0  # how many times the backend changed under this oracle (invalidate)

    def invalidate(self) -> None:
        """The backend now gives other Fields (its network took optimiser steps): forget every
        cached Field, so the next request computes it with the current backend. Refused with a disk cache, whose entries are keyed by a fixed backend."""
        if self.cfg.disk_cache is not None:
            raise ValueError(f"registration oracle: a backend that changes during the run cannot share the disk "
                             f"cache {self.cfg.cache!r}; set oracle.cache to ''")
        self.fields = ByteLRU[CanonicalField](self.fields.max_bytes, lambda f: f.nbytes)
        self.version += 1

    # -- cases ---------------------------------------------------------------------------------
    def case(self, case_id: str) -> Case:
        case = self.targets.get(case_id, self.atlases.get(case_id))
        if case is None:
            raise CaseError(f"registration oracle: unknown case {case_id!r}")
        return case

    def _digest(self, case_id: str) -> str:
        if case_id not in self._digests:
            case = self.case(case_id)
            self._digests[case_id] = volume_digest(case.image, case.spacing)
        return self._digests[case_id]

    def _disk_path(self, target_id: str, atlas_id: str) -> Optional[Path]:
        if self.cfg.disk_cache is None:
            return None
        key = pair_key(self._fingerprint, self._digest(target_id), self._digest(atlas_id))
        return Path(self.cfg.disk_cache) / key[:2] / f"{key}.npz"

    # -- Fields --------------------------------------------------------------------------------
    def field(self, target_id: str, atlas_id: str) -> CanonicalField:
        """The Field mapping target voxels to atlas voxels."""
        return self.many_fields([(target_id, atlas_id)])[0]

    def many_fields(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[CanonicalField]:
        """Fields of ``(target_id, atlas_id)`` pairs: from memory, else disk, else computed.

        All returned Fields are held until the caller drops them, whatever the memory bound;
        :meth:`warm` is the way to go over many pairs.
        """
        found = {pair: self._cached(pair) for pair in dict.fromkeys(pairs)}
        missing = [pair for pair, fld in found.items() if fld is None]
        if missing:
            self._compute(missing, progress, found.__setitem__)
        return [found[p] for p in pairs]  # type: ignore[misc]

    def _cached(self, pair: tuple[str, str]) -> Optional[CanonicalField]:
        hit = self.fields.get(pair)
        if hit is None:
            path = self._disk_path(*pair)
            if path is not None and path.is_file():
                try:
                    hit = load_field(path)
                except CorruptCacheEntry as exc:
                    warnings.warn(f"{exc}; moved to {quarantine(path).name} and recomputing the pair", stacklevel=2)
                    return None
                self._check_field(pair, hit)
                self.fields.put(pair, hit)
        return hit

    def _compute(self, pairs: list[tuple[str, str]], progress: bool,
                 deliver: Callable[[tuple[str, str], CanonicalField], None]) -> None:
        """Register ``pairs``; each Field is checked, cached (memory, disk) and handed to
        ``deliver`` as soon as it exists, so nothing else holds it."""
        def store(pair: tuple[str, str], fld: CanonicalField) -> None:
            self._check_field(pair, fld)
            self.fields.put(pair, fld)
            path = self._disk_path(*pair)
            if path is not None:
                save_field(path, fld)
            deliver(pair, fld)

        with tqdm(total=len(pairs), desc=f"register ({self.backend.spec})", unit="pair",
                  disable=None if progress else True, leave=False) as bar:
            if self.cfg.workers > 1 and not self.backend.spec.runs_in_process and len(pairs) > 1:
                self._compute_in_pool(pairs, store, bar)
            else:
                self._compute_in_process(pairs, store, bar)

    def _check_field(self, pair: tuple[str, str], fld: CanonicalField) -> None:
        """Refuse a Field of the wrong shapes or an implausible one (NaN, far outside, noise):
        it would teach every later step, and every run sharing the cache, wrong labels."""
        target, atlas = self.case(pair[0]), self.case(pair[1])
        if not isinstance(fld, CanonicalField):
            raise TypeError(f"backend {str(self.backend.spec)!r} returned a {type(fld).__name__}, not a CanonicalField")
        if tuple(fld.fixed_shape) != target.shape or tuple(fld.moving_shape) != atlas.shape:
            raise ValueError(
                f"backend {str(self.backend.spec)!r} returned a Field from {fld.fixed_shape} onto "
                f"{fld.moving_shape} for target {pair[0]} {target.shape} / atlas {pair[1]} {atlas.shape}"
            )
        fld.check(f"backend {str(self.backend.spec)!r}, target {pair[0]} / atlas {pair[1]}")

    def _inputs(self, pair: tuple[str, str]) -> tuple[np.ndarray, tuple, np.ndarray, tuple]:
        target, atlas = self.case(pair[0]), self.case(pair[1])
        return target.image, tuple(target.spacing), atlas.image, tuple(atlas.spacing)

    def _compute_in_process(self, pairs: list[tuple[str, str]], store: Callable, bar: tqdm) -> None:
        step = LEARNED_BATCH
        with torch.no_grad():
            for start in range(0, len(pairs), step):
                chunk = pairs[start:start + step]
                for pair, fld in zip(chunk, self.backend.register_many([self._inputs(p) for p in chunk])):
                    store(pair, fld)
                bar.update(len(chunk))

    def _compute_in_pool(self, pairs: list[tuple[str, str]], store: Callable, bar: tqdm) -> None:
        workers = min(self.cfg.workers, len(pairs))
        ctx = multiprocessing.get_context("spawn")  # a forked torch runtime can deadlock its threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_thread_worker) as pool:
            backend = self.backend
            frontend = FrontEnd(backend.grid, backend.prealign)  # type: ignore[attr-defined]
            jobs = {pool.submit(_register_pair, backend.spec, frontend, *self._inputs(p)): p for p in pairs}
            for job in as_completed(jobs):
                store(jobs.pop(job), job.result())
                bar.update(1)

    # -- atlas policy --------------------------------------------------------------------------
    def atlases_for(self, target_id: str, step: int, slice_index: int = 0) -> tuple[str, ...]:
        """The atlas(es) guiding ``target_id`` at ``step`` under the configured policy.

        'random' draws one atlas from (seed, step, target, slice), so every caller asking the
        same question in the same step (RSL and REPS) gets the same answer, with no shared RNG.
        """
        if self.cfg.policy == "fused":
            return self.atlas_ids
        if self.cfg.policy == "similar":
            return (self.most_similar(target_id),)
        salt = zlib.crc32(target_id.encode())
        rng = np.random.default_rng([self.seed, int(step), salt, int(slice_index)])
        return (self.atlas_ids[int(rng.integers(len(self.atlas_ids)))],)

    def most_similar(self, target_id: str) -> str:
        """The atlas whose image has the highest NCC with the target's on the canonical grid."""
        if target_id not in self._similar:
            target = self.case(target_id)
            scores = [canonical_ncc(target.image, self.atlases[a].image, SIMILARITY_SHAPE)
                      for a in self.atlas_ids]
            self._similar[target_id] = self.atlas_ids[int(np.argmax(scores))]
        return self._similar[target_id]

    def needed_pairs(self, target_ids: Optional[Iterable[str]] = None) -> list[tuple[str, str]]:
        """Every (target, atlas) pair the policy can ask for."""
        ids = list(self.targets) if target_ids is None else list(target_ids)
        if self.cfg.policy == "similar":
            return [(t, self.most_similar(t)) for t in ids]
        return [(t, a) for t in ids for a in self.atlas_ids]

    def warm(self, target_ids: Optional[Iterable[str]] = None, progress: bool = True,
             shard: tuple[int, int] = (0, 1)) -> int:
        """Compute (or load) every Field the policy can ask for, so that steps find them cached.

        ``shard = (rank, processes)``: with a disk cache, this process computes only every
        ``processes``-th missing pair from ``rank`` on; the others come from the disk cache
        once their process has written them (the caller waits for that, e.g. at a barrier).
        Returns the number of pairs the policy can ask for. What exceeds the memory bound is
        dropped again and reloaded or recomputed on demand.
        """
        rank, processes = shard
        if not 0 <= rank < processes:
            raise ValueError(f"warm: shard must be (rank, processes) with 0 <= rank < processes, got {shard}")
        ids = list(self.targets) if target_ids is None else list(target_ids)
        pairs = self.needed_pairs(ids)
        if self.cfg.disk_cache is not None and processes > 1:
            pairs_here = pairs[rank::processes]
        else:
            pairs_here = pairs  # without a shared cache every process needs every pair itself
        missing = [pair for pair in pairs_here if self._cached(pair) is None]
        if missing:
            self._compute(missing, progress, lambda pair, fld: None)
        return len(pairs)

    # -- warped atlas labels -------------------------------------------------------------------
    def warped_points(self, target_id: str, atlas_ids: Sequence[str], points_zyx: np.ndarray) -> WarpedAtlas:
        """Labels of ``atlas_ids`` at the points their Fields map ``points_zyx`` (N, 3) of the
        target to, and their vote (:meth:`vote_at`)."""
        pts = np.asarray(points_zyx, dtype=np.float64)
        on_target = points_inside(pts, self.case(target_id).shape)
        fields = [self._point_field(fld, pts) for fld in self.many_fields([(target_id, a) for a in atlas_ids])]
        return self.vote_at(atlas_ids, fields, on_target)

    def vote_at(self, atlas_ids: Sequence[str], point_fields: Sequence[Field], on_target: np.ndarray) -> WarpedAtlas:
        """The labels of ``atlas_ids`` through their point Fields ``(1, 1, N)`` (soft one-hot,
        linear; zero for a point off the target, bool ``on_target (N,)``, or mapped off an atlas),
        and their vote: a WarpedAtlas of probs ``(C, N)``."""
        inside = on_target.astype(np.float32)
        softs = [fld.warp_onehot(self.atlases[a].label, self.num_classes)[:, 0, 0] * inside
                 for a, fld in zip(atlas_ids, point_fields)]
        return vote(atlas_ids, softs)

    def points_field(self, target_id: str, atlas_id: str, points_zyx: np.ndarray) -> Field:
        """The pair's Field restricted to ``points_zyx`` (N, 3) of the target: a Field of fixed
        shape ``(1, 1, N)`` into the atlas's native grid, so ``warp_image`` / ``warp_onehot`` of
        any atlas volume give its values at the N corresponding points (an image and its label
        carried through the same map stay in register)."""
        return self._point_field(self.field(target_id, atlas_id), np.asarray(points_zyx, dtype=np.float64))

    @staticmethod
    def _point_field(fld: CanonicalField, pts: np.ndarray) -> Field:
        there = fld.map_points(pts).T.reshape(3, 1, 1, -1)
        return Field(np.ascontiguousarray(there), fld.moving_shape)

    def warped_label(self, target_id: str, atlas_ids: Sequence[str], slab_slices: int = 8) -> np.ndarray:
        """uint8 ``(Z, Y, X)``: the vote of ``atlas_ids``' labels warped onto the whole target,
        computed ``slab_slices`` slices at a time (the registration-only prediction)."""
        Z = self.case(target_id).shape[0]
        return np.concatenate([self._warp(target_id, atlas_ids, z, min(z + slab_slices, Z)).hard_label()
                               for z in range(0, Z, slab_slices)])

    def _warp(self, target_id: str, atlas_ids: Sequence[str], start: int, stop: int) -> WarpedAtlas:
        """Atlas labels warped onto target slices ``start .. stop - 1`` and their vote."""
        fields = self.many_fields([(target_id, a) for a in atlas_ids])
        return vote(atlas_ids, [fld.slab(start, stop).warp_onehot(self.atlases[a].label, self.num_classes)
                                 for a, fld in zip(atlas_ids, fields)])


def vote(atlas_ids: Sequence[str], softs: Sequence[np.ndarray]) -> WarpedAtlas:
    """The mean of the atlases' soft one-hots (C, ...) and the share of atlases whose own
    argmax (where they cover a voxel) equals the argmax of that mean."""
    probs = np.mean(softs, axis=0)
    vote = probs.argmax(axis=0)
    hard = [np.where(soft.sum(axis=0) > 0.5, soft.argmax(axis=0), -1) for soft in softs]
    agreement = np.mean([h == vote for h in hard], axis=0)
    return WarpedAtlas(tuple(atlas_ids), probs.astype(np.float16), agreement.astype(np.float16))
