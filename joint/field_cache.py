"""The registration oracle's caches of Fields: a memory LRU bounded in bytes, and the disk
cache, whose entries are keyed on content (backend parameters and both volumes' voxels), written
atomically, checked when read, and moved aside (``.corrupt``) when damaged.

An entry is a :class:`reg.field.CanonicalField` as it is held in memory: the canonical
displacement in float16 and the two placements, a few hundred kB whatever the native grid.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Hashable, Optional, Sequence, TypeVar

import numpy as np

from cctr.reg.backends import Backend
from cctr.reg.field import CanonicalField
from cctr.seg.atomic import atomic_path

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """A least-recently-used map whose values together stay under ``max_bytes``.

    A value larger than the whole budget is never kept. ``size_of`` measures a value.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._items: "OrderedDict[Hashable, tuple[V, int]]" = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Optional[V]:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Hashable, value: V) -> None:
        size = int(self._size_of(value))
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]
        if size > self.max_bytes:
            return
        while self._items and self.nbytes + size > self.max_bytes:
            self.nbytes -= self._items.popitem(last=False)[1][1]
        self._items[key] = (value, size)
        self.nbytes += size


def volume_digest(image_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> str:
    """Content hash of a volume: its shape, spacing and voxel values (not its name or path)."""
    arr = np.ascontiguousarray(image_zyx, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([list(arr.shape), [float(s) for s in spacing_zyx]]).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def backend_fingerprint(backend: Backend) -> str:
    """What identifies a backend's output: its ``params`` (:func:`reg.backends.backend_params`:
    every option with defaults filled in, the canonical front end and, for a learned backend,
    the checkpoint's SHA-256, so retraining under the same path never reuses old Fields).
    A backend without ``params`` (a test double) is identified by its spec alone."""
    described = getattr(backend, "params", None)
    blob = json.dumps({"spec": str(backend.spec), "params": described}, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


# Part of every disk-cache key: a change of the stored format makes old entries unreachable
# instead of misread (format 1 stored the dense native displacement).
CACHE_FORMAT = 2


def pair_key(fingerprint: str, target_digest: str, atlas_digest: str) -> str:
    """The disk-cache key of one (target = fixed, atlas = moving) pair under one backend."""
    blob = f"{CACHE_FORMAT}|{fingerprint}|{target_digest}|{atlas_digest}"
    return hashlib.blake2b(blob.encode(), digest_size=20).hexdigest()


def save_field(path: Path, field: CanonicalField) -> None:
    """Store ``field`` as it is held (float16 canonical displacement, the two placements),
    atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, displacement=field.disp, fixed_to_native=field.fixed_to_native,
                 moving_to_native=field.moving_to_native,
                 fixed_shape=np.asarray(field.fixed_shape, dtype=np.int64),
                 moving_shape=np.asarray(field.moving_shape, dtype=np.int64))


class CorruptCacheEntry(ValueError):
    """A cached Field that cannot be read or is not a plausible registration."""


def load_field(path: Path) -> CanonicalField:
    """Read a Field written by :func:`save_field` and check it (:meth:`CanonicalField.check`);
    an unreadable, malformed or implausible file raises :class:`CorruptCacheEntry`."""
    try:
        with np.load(path) as z:
            parts = {name: z[name] for name in ("displacement", "fixed_to_native", "moving_to_native",
                                                "fixed_shape", "moving_shape")}
    except Exception as exc:  # numpy raises several types for truncated or foreign files
        raise CorruptCacheEntry(f"{path}: unreadable cached Field ({type(exc).__name__}: {exc})") from exc
    try:
        field = CanonicalField(parts["displacement"], parts["fixed_to_native"], tuple(parts["fixed_shape"]),
                               parts["moving_to_native"], tuple(parts["moving_shape"]))
    except (ValueError, TypeError) as exc:
        raise CorruptCacheEntry(f"{path}: malformed cached Field ({exc})") from exc
    try:
        return field.check(f"{path}: cached Field")
    except ValueError as exc:
        raise CorruptCacheEntry(str(exc)) from exc


def quarantine(path: Path) -> Path:
    """Move a bad cache entry aside (``<name>.corrupt``, kept for a post-mortem, never read
    again) so the pair is recomputed; returns where it went."""
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    return aside
