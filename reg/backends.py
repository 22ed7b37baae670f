"""Every registration backend behind one interface: :func:`load_backend` turns a parsed
:class:`reg.spec.BackendSpec` into an object with ``register`` / ``register_many`` that return
:class:`~reg.field.CanonicalField` objects (the Field on the fixed volume's native grid, kept
compact). :func:`live_backend` wraps a network that is still training (coupled training,
:mod:`joint.coupled`) instead of a file.

The learned and classical backends share one front end (:mod:`reg.placement`): canonical grid
and pre-alignment, so they differ only in the deformable step. The learned backend takes its
front end from its checkpoint; the classical ones from the caller (a dataset's plan), else the
project defaults.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from cctr.reg.checkpoint import file_sha256, load_model
from cctr.reg.classical import ants_syn, bspline, demons, require_ants
from cctr.reg.config import RegConfig
from cctr.reg.field import CanonicalField
from cctr.reg.grid import CanonicalGrid
from cctr.reg.losses import RegistrationLoss
from cctr.reg.model import RegistrationNet
from cctr.reg.placement import FrontEnd, Placed, check_volume, field_of, place_pair, place_volume
from cctr.reg.prealign import PrealignConfig
from cctr.reg.refine import RefineConfig, refine_displacement
from cctr.reg.spec import BackendSpec

Pair = tuple[np.ndarray, Sequence[float], np.ndarray, Sequence[float]]  # fixed, its spacing, moving, its spacing
# pairs per forward pass of the learned net: small enough for any CPU, and the batch size every
# measurement of the refined Fields was made with (a pair's refined Field moves by float noise
# with its batch-mates)
LEARNED_BATCH = 4


class Backend(Protocol):
    spec: BackendSpec

    def register(self, fixed_zyx: np.ndarray, fixed_spacing: tuple, moving_zyx: np.ndarray, moving_spacing: tuple) -> CanonicalField: ...

    def register_many(self, pairs: Sequence[Pair]) -> list[CanonicalField]: ...


def check_device(name: Union[str, torch.device], what: str = "device") -> torch.device:
    """The torch device ``name``; ValueError when it is malformed or this machine lacks it."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"{what}: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {name!r} asked for, but this machine or torch build has no CUDA; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _volume_key(image: np.ndarray, spacing: Sequence[float]) -> str:
    h = hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16)
    h.update(np.asarray(spacing, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class IdentityBackend:
    """No registration: each fixed voxel maps to the moving voxel at the same offset in mm
    from the volume's centre (the plain overlay when both share a grid)."""

    spec: BackendSpec = BackendSpec("identity", "identity")

    @property
    def params(self) -> dict[str, Any]:
        return {"kind": "identity"}

    def register(self, fixed_zyx: np.ndarray, fixed_spacing: tuple, moving_zyx: np.ndarray, moving_spacing: tuple) -> CanonicalField:
        check_volume(fixed_zyx, fixed_spacing, "fixed volume")
        check_volume(moving_zyx, moving_spacing, "moving volume")
        f_c = (np.asarray(np.shape(fixed_zyx), float) - 1) / 2
        m_c = (np.asarray(np.shape(moving_zyx), float) - 1) / 2
        scale = np.asarray(fixed_spacing, float) / np.asarray(moving_spacing, float)
        m = np.eye(4)
        m[:3, :3] = np.diag(scale)
        m[:3, 3] = m_c - scale * f_c
        return CanonicalField.from_affine(m, np.shape(fixed_zyx), np.shape(moving_zyx))

    def register_many(self, pairs: Sequence[Pair]) -> list[CanonicalField]:
        return [self.register(*p) for p in pairs]


DisplacementFn = Callable[[list[tuple[Placed, Placed]]], list[np.ndarray]]


class PlacedPairs:
    """The placed (fixed, pre-aligned moving) volumes of the pairs a backend saw last, up to
    ``max_bytes`` of arrays, least recently used dropped first: a backend asked for the same
    pairs again (the coupled run's refreshes, every few steps) places and pre-aligns them once.
    Placement is a pure function of the two volumes, so a kept pair equals a new one bit for bit."""

    def __init__(self, max_bytes: int = 256 * 2 ** 20) -> None:
        self.max_bytes = max_bytes
        self._pairs: OrderedDict[tuple[str, str], tuple[Placed, Placed]] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _nbytes(pair: tuple[Placed, Placed]) -> int:
        return sum(p.image.nbytes + p.native_image.nbytes for p in pair)

    def get(self, key: tuple[str, str]) -> Optional[tuple[Placed, Placed]]:
        pair = self._pairs.get(key)
        if pair is not None:
            self._pairs.move_to_end(key)
        return pair

    def put(self, key: tuple[str, str], pair: tuple[Placed, Placed]) -> None:
        """Keep ``pair`` (a key not kept yet: callers put after a miss of :meth:`get`)."""
        self._pairs[key] = pair
        self._bytes += self._nbytes(pair)
        while self._bytes > self.max_bytes and self._pairs:
            self._bytes -= self._nbytes(self._pairs.popitem(last=False)[1])


@dataclass(frozen=True, eq=False)
class CanonicalBackend:
    """Places volumes on the canonical grid, pre-aligns each pair, and asks ``displacements``
    for the canonical deformation of a list of placed pairs (so it can batch them)."""

    spec: BackendSpec
    grid: CanonicalGrid
    prealign: PrealignConfig
    displacements: DisplacementFn
    params: dict[str, Any]  # everything that determines the output, as plain data (cache keys)
    placed_pairs: PlacedPairs = field(default_factory=PlacedPairs)

    def register(self, fixed_zyx: np.ndarray, fixed_spacing: tuple, moving_zyx: np.ndarray, moving_spacing: tuple) -> CanonicalField:
        return self.register_many([(fixed_zyx, fixed_spacing, moving_zyx, moving_spacing)])[0]

    def register_many(self, pairs: Sequence[Pair]) -> list[CanonicalField]:
        placed: dict[str, Placed] = {}

        def place(image: np.ndarray, spacing: Sequence[float], key: str) -> Placed:
            if key not in placed:
                placed[key] = place_volume(image, spacing, self.grid)
            return placed[key]

        jobs = []
        for f_img, f_sp, m_img, m_sp in pairs:
            check_volume(f_img, f_sp, "fixed volume")
            check_volume(m_img, m_sp, "moving volume")
            key = (_volume_key(f_img, f_sp), _volume_key(m_img, m_sp))
            pair = self.placed_pairs.get(key)
            if pair is None:
                fixed = place(f_img, f_sp, key[0])
                pair = (fixed, place_pair(fixed, place(m_img, m_sp, key[1]), self.grid, self.prealign))
                self.placed_pairs.put(key, pair)
            jobs.append(pair)
        disps = self.displacements(jobs) if jobs else []
        # a diverged net or a failed classical run must not hand NaN or wild Fields onward
        return [field_of(d, f, m).check(f"backend {str(self.spec)!r}") for d, (f, m) in zip(disps, jobs)]


def _learned_displacements(net: RegistrationNet, device: torch.device, refine: RefineConfig,
                           loss: RegistrationLoss) -> DisplacementFn:
    def run(jobs: list[tuple[Placed, Placed]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(jobs), LEARNED_BATCH):
            chunk = jobs[start:start + LEARNED_BATCH]
            fixed = torch.from_numpy(np.stack([f.image for f, _ in chunk]))[:, None].to(device)
            moving = torch.from_numpy(np.stack([m.image for _, m in chunk]))[:, None].to(device)
            if not refine.active:
                with torch.no_grad():
                    disp, _ = net(fixed, moving)
            else:
                disp = refine_displacement(net, fixed, moving, refine, loss)
            out.extend(d.cpu().numpy() for d in disp)
        return out

    return run


def _per_pair(fn: Callable[[np.ndarray, np.ndarray, Sequence[float], Any], np.ndarray], params: Any, grid: CanonicalGrid) -> DisplacementFn:
    return lambda jobs: [fn(f.image, m.image, grid.spacing, params) for f, m in jobs]


_CLASSICAL: dict[str, Callable[..., np.ndarray]] = {"sitk-demons": demons, "sitk-bspline": bspline, "ants-syn": ants_syn}


def live_backend(net: RegistrationNet, config: RegConfig, device: torch.device, refine: RefineConfig,
                 spec: Optional[BackendSpec] = None) -> CanonicalBackend:
    """A learned backend over a network that is still training (:mod:`joint.coupled`): it reads
    ``net``'s current weights at every call, then refines each pair as ``refine`` says. A pair's
    refined Field can differ by float noise with the pairs batched with it, so a caller that must
    reproduce its Fields exactly (a resumed run) asks for the same pairs in the same calls
    (:meth:`joint.oracle.RegistrationOracle.warm`). Its ``params`` say ``live``: never cache its
    Fields on disk, where they would be keyed as one fixed network's."""
    refine.check_grid(config.grid.shape)
    described = {"kind": "learned", "live": True, "config": config.to_dict(), **refine.described()}
    spec = spec or BackendSpec("learned:live", "learned", Path("live"), refine)
    return CanonicalBackend(spec, config.grid, config.prealign,
                            _learned_displacements(net, device, refine, RegistrationLoss(config.loss)), described)


def load_backend(spec: Union[BackendSpec, str], frontend: Optional[FrontEnd] = None,
                 device: Union[str, torch.device] = "cpu") -> Backend:
    """The backend ``spec`` names. ``frontend`` sets the canonical grid and pre-alignment of the
    classical backends (default: the project defaults; the spec's ``prealign=`` wins); the learned
    backend always uses the ones stored in its checkpoint and runs on ``device``. ValueError /
    FileNotFoundError for a bad spec or checkpoint, ImportError for a missing optional extra."""
    s = spec if isinstance(spec, BackendSpec) else BackendSpec.parse(spec)
    if s.kind == "identity":
        return IdentityBackend(s)
    if s.is_learned:
        path = Path(s.checkpoint)  # type: ignore[arg-type]
        net, config = load_model(path)
        try:
            s.refine.check_grid(config.grid.shape)
        except ValueError as exc:
            raise ValueError(f"backend {s.text!r}: {exc}") from exc
        the_device = check_device(device)
        described = {"kind": "learned", "checkpoint_sha256": file_sha256(path), "config": config.to_dict(),
                     **s.refine.described()}
        return CanonicalBackend(s, config.grid, config.prealign,
                                _learned_displacements(net.to(the_device), the_device, s.refine,
                                                       RegistrationLoss(config.loss)), described)
    front = frontend or FrontEnd()
    chosen = replace(front.prealign, **({"method": s.prealign} if s.prealign else {}))
    the_grid = front.grid
    if s.kind == "ants-syn":
        require_ants()
    described = {"kind": s.kind, **(asdict(s.params) if s.params is not None else {}), "grid": asdict(the_grid),
                 "prealign": asdict(chosen)}
    return CanonicalBackend(s, the_grid, chosen, _per_pair(_CLASSICAL[s.kind], s.params, the_grid), described)
