"""Every registration backend behind one interface, chosen by one string.

Specs::

    identity                         volumes overlaid centre on centre, nothing estimated
    learned:PATH/TO/CKPT             the trained network (reg.train), batched, no_grad
    learned:PATH/TO/CKPT?refine=N    the same, then N Adam steps per pair on its velocity field
    sitk-demons                      SimpleITK diffeomorphic demons (the classical default)
    sitk-bspline                     SimpleITK B-spline free-form deformation
    ants-syn                         ANTs SyN via the optional antspyx package

Any spec but ``identity`` takes options after ``?``, e.g. ``sitk-demons?iterations=100&
sigma_mm=2``, ``learned:run/best.pt?batch=8``; ``prealign=none`` switches the classical
backends' rigid search off (the learned one always uses the pre-alignment it was trained
with). All return :class:`~reg.field.CanonicalField` objects: the Field on the fixed volume's native grid, kept compact.

``refine=N`` (``refine_lr``, default 0.1 voxel per step) is the learned answer to classical
per-pair optimisation: starting from the net's stationary velocity field, N Adam steps on the
net's own training objective without labels (image similarity + smoothness weight of its
checkpoint), then integrated as usual, so the map stays diffeomorphic. ``refine_scale=2``
(the default) takes those steps on a grid twice as coarse, about 8 times cheaper each, and
``refine_fine=M`` (default 4) adds M steps on the canonical grid after them (coarse to fine,
as classical methods do). Those correct a small map composed on the fixed side of the integrated one
(``refine_fine_field=composed``, the default: one warp per step) or, with
``refine_fine_field=velocity``, the velocity (integrated at every step, the slower default
before it); ``refine_scale=1&refine_fine=0`` refines on the canonical grid only, and
``refine=0`` is the net alone. :func:`live_backend`
wraps a network being trained (coupled training, :mod:`joint.coupled`) instead of a file.

The learned and classical backends share one front end (:mod:`reg.placement`): same
canonical grid, same pre-alignment, so they differ only in the deformable step.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from voxelmorph.nn import functional as vxm_fn

from cctr.reg.checkpoint import file_sha256, load_model
from cctr.reg.config import RegConfig
from cctr.reg.classical import BSplineParams, DemonsParams, SynParams, ants_syn, bspline, demons, require_ants
from cctr.reg.field import CanonicalField
from cctr.reg.grid import CanonicalGrid
from cctr.reg.losses import SmoothnessLoss, similarity_loss
from cctr.reg.model import RegistrationNet
from cctr.reg.placement import Placed, check_volume, field_of, place_pair, place_volume
from cctr.reg.prealign import PrealignConfig

Pair = tuple[np.ndarray, Sequence[float], np.ndarray, Sequence[float]]  # fixed, its spacing, moving, its spacing
KINDS = ("identity", "learned", "sitk-demons", "sitk-bspline", "ants-syn")


class Backend(Protocol):
    spec: str

    def register(self, fixed_zyx: np.ndarray, fixed_spacing: tuple, moving_zyx: np.ndarray, moving_spacing: tuple) -> CanonicalField: ...

    def register_many(self, pairs: Sequence[Pair]) -> list[CanonicalField]: ...


@dataclass(frozen=True)
class Spec:
    kind: str
    path: Optional[str]
    options: dict[str, str]


def parse_spec(spec: str) -> Spec:
    """Split ``KIND[:PATH][?key=value&...]``; ValueError for anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty registration backend spec; expected one of {KINDS}")
    head, _, query = spec.strip().partition("?")
    kind, _, path = head.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown registration backend {spec!r}; expected one of {KINDS} (learned as 'learned:PATH')")
    if kind == "learned" and not path:
        raise ValueError(f"backend {spec!r}: give the checkpoint as 'learned:PATH/TO/CKPT'")
    if kind != "learned" and path:
        raise ValueError(f"backend {spec!r}: only 'learned' takes a path")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"backend {spec!r}: option {item!r} is not key=value")
        options[key] = value
    if kind == "identity" and options:
        raise ValueError(f"backend {spec!r}: identity takes no options")
    parsed = Spec(kind, path or None, options)
    _typed_options(parsed, spec)  # every option's type and range, before any work is done
    return parsed


def check_device(name: str, spec: str) -> torch.device:
    """The torch device ``name``; ValueError when it is malformed or this machine lacks it."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"backend {spec!r}: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"backend {spec!r}: device {name!r} asked for, but this machine or torch build has no CUDA; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"backend {spec!r}: device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _typed_options(s: Spec, spec: str) -> tuple[Any, Any]:
    """The typed, checked options of a parsed spec: (LearnedParams, None) for ``learned``,
    (backend params, ClassicalCommon) for the classical kinds, (None, None) for identity."""
    if s.kind == "identity":
        return None, None
    if s.kind == "learned":
        params = _typed(LearnedParams, s.options, spec)
        if params.batch < 1:
            raise ValueError(f"backend {spec!r}: batch must be >= 1")
        if min(params.refine, params.refine_fine) < 0 or not params.refine_lr > 0 or params.refine_scale < 1:
            raise ValueError(f"backend {spec!r}: refine and refine_fine must be >= 0, refine_lr > 0 and "
                             "refine_scale >= 1")
        try:
            check_fine_field(params.refine_fine_field)
        except ValueError as exc:
            raise ValueError(f"backend {spec!r}: {exc}") from exc
        check_device(params.device, spec)
        return params, None
    params_cls, _ = _CLASSICAL[s.kind]
    own, rest = _split_options(params_cls, s.options)
    common = _typed(ClassicalCommon, rest, spec, also_known=[f.name for f in fields(params_cls)])
    try:
        if common.prealign:
            replace(PrealignConfig(), method=common.prealign)
    except ValueError as exc:
        raise ValueError(f"backend {spec!r}: {exc}") from exc
    return _typed(params_cls, own, spec), common


def _typed(params_cls: type, options: dict[str, str], spec: str, also_known: Sequence[str] = ()) -> Any:
    """A params dataclass with string options converted to its fields' types."""
    known = {f.name: f for f in fields(params_cls)}
    values = {}
    for key, raw in options.items():
        if key not in known:
            raise ValueError(f"backend {spec!r}: unknown option {key!r}; known: {sorted([*known, *also_known])}")
        default = getattr(params_cls(), key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(raw)
                values[key] = raw.lower() in ("1", "true", "yes")
            else:
                values[key] = type(default)(raw)
        except ValueError as exc:
            raise ValueError(f"backend {spec!r}: option {key}={raw!r} is not a valid {type(default).__name__}") from exc
    try:
        return params_cls(**values)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"backend {spec!r}: {exc}") from exc


def _volume_key(image: np.ndarray, spacing: Sequence[float]) -> str:
    h = hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=16)
    h.update(np.asarray(spacing, dtype=np.float64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class IdentityBackend:
    """No registration: each fixed voxel maps to the moving voxel at the same offset in mm
    from the volume's centre (the plain overlay when both share a grid)."""

    spec: str = "identity"

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

    spec: str
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
        return [field_of(d, f, m).check(f"backend {self.spec!r}") for d, (f, m) in zip(disps, jobs)]


def _learned_displacements(net: RegistrationNet, batch: int, device: torch.device,
                           refine: Optional["Refinement"] = None) -> DisplacementFn:
    def run(jobs: list[tuple[Placed, Placed]]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            fixed = torch.from_numpy(np.stack([f.image for f, _ in chunk]))[:, None].to(device)
            moving = torch.from_numpy(np.stack([m.image for _, m in chunk]))[:, None].to(device)
            if refine is None or refine.steps == 0:
                with torch.no_grad():
                    disp, _ = net(fixed, moving)
            else:
                disp = refine_displacement(net, fixed, moving, refine)
            out.extend(d.cpu().numpy() for d in disp)
        return out

    return run


@dataclass(frozen=True)
class Refinement:
    """Test-time refinement of the learned backend: ``steps`` Adam steps of learning rate
    ``lr`` (canonical voxels per step) on the velocity field, minimising ``similarity`` +
    ``smoothness_weight`` * smoothness of the displacement (the pretraining loss, no labels).
    ``scale`` > 1 takes those steps on a grid ``scale`` times coarser in every axis (images
    average-pooled, the loss evaluated there), each about ``scale**3`` times cheaper; then
    ``fine_steps`` more on the canonical grid itself recover what the coarse grid blurs.
    ``fine_field`` says what those last steps correct: the ``velocity`` (integrated at every
    step: ``integration_steps + 1`` warps per step) or a small map ``psi`` composed on the
    fixed side of the integrated one, ``phi = phi0 o psi`` (``composed``: the moving image
    warped by ``phi0`` once, then one warp per step). det J of the composition is the product
    of the two maps' det J, so ``psi`` (at most ``fine_steps * lr`` voxel, under the smoothness
    term) adds no folding where ``phi0`` has none unless its own gradient reaches -1."""

    steps: int
    lr: float
    similarity: str
    ncc_window: tuple[int, int, int]
    smoothness_weight: float
    scale: int = 1
    fine_steps: int = 0
    fine_field: str = "velocity"

    def __post_init__(self) -> None:
        check_fine_field(self.fine_field)

    @property
    def passes(self) -> tuple[tuple[str, int, int], ...]:
        """``(field, scale, steps)`` of each pass, coarse first; passes of 0 steps are listed too."""
        if self.fine_field == "composed":
            return (("velocity", self.scale, self.steps), ("composed", 1, self.fine_steps))
        if self.scale == 1:
            return (("velocity", 1, self.steps + self.fine_steps),)
        return (("velocity", self.scale, self.steps), ("velocity", 1, self.fine_steps))


FINE_FIELDS = ("velocity", "composed")


def check_fine_field(name: str) -> None:
    """ValueError unless ``name`` is one of :data:`FINE_FIELDS`."""
    if name not in FINE_FIELDS:
        raise ValueError(f"refine_fine_field must be one of {', '.join(FINE_FIELDS)}, got {name!r}")


def refine_displacement(net: RegistrationNet, fixed: torch.Tensor, moving: torch.Tensor, refine: Refinement) -> torch.Tensor:
    """Canonical displacement (B, 3, Z, Y, X) after the Adam steps of ``refine``, starting from
    the net's velocity field for (fixed, moving) (B, 1, Z, Y, X); the net's weights are not
    touched. The loss is the SUM of the pairs' own losses and Adam works element by element,
    so a pair's result does not depend on the pairs batched with it (beyond float noise of the
    batched forward pass, which Adam's normalised steps can grow to ~1e-3 voxel)."""
    steps_of = net.vxm.integration_steps
    with torch.no_grad():
        velocity = net.vxm(moving, fixed, return_field_type="velocity")
    disp = None
    for corrected, scale, steps in refine.passes:
        if not steps:
            continue
        if corrected == "velocity":
            velocity = _refine_velocity(velocity, fixed, moving, refine, scale, steps, steps_of)
        else:
            with torch.no_grad():
                disp = vxm_fn.integrate_vec(velocity, steps_of)
            disp = _compose_fine(disp, fixed, moving, refine, steps)
    if disp is not None:
        return disp
    with torch.no_grad():
        return vxm_fn.integrate_vec(velocity, steps_of)


def _optimise(base: torch.Tensor, to_disp: Callable[[torch.Tensor], torch.Tensor], fixed: torch.Tensor,
              moving: torch.Tensor, refine: Refinement, lr: float, steps: int) -> torch.Tensor:
    """The correction to ``base`` after ``steps`` Adam steps on it, the loss taken on the
    displacement ``to_disp(base + correction)`` (B, 3, Z, Y, X) of the grid of ``fixed``/``moving``."""
    correction = torch.zeros_like(base, requires_grad=True)
    optimiser = torch.optim.Adam([correction], lr=lr)
    sim, smooth = similarity_loss(refine.similarity, refine.ncc_window), SmoothnessLoss()
    with torch.enable_grad():   # callers may hold no_grad (the oracle does): this part needs gradients
        for _ in range(steps):
            disp = to_disp(base + correction)
            warped = vxm_fn.spatial_transform(moving, disp, non_spatial_dims=(0, 1))
            loss = sum(sim(warped[b:b + 1], fixed[b:b + 1]) + refine.smoothness_weight * smooth(disp[b:b + 1])
                       for b in range(disp.shape[0]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return correction.detach()


def _compose_fine(disp0: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, refine: Refinement,
                  steps: int) -> torch.Tensor:
    """The displacement (B, 3, Z, Y, X) of ``phi0 o psi``, where ``phi0(c) = c + disp0(c)`` and
    ``psi(c) = c + u(c)`` took ``steps`` Adam steps on similarity(moving o phi0 o psi, fixed)
    + smoothness of ``u`` (:func:`compose`)."""
    with torch.no_grad():
        warped0 = vxm_fn.spatial_transform(moving, disp0, non_spatial_dims=(0, 1))
    u = _optimise(torch.zeros_like(disp0), lambda d: d, fixed, warped0, refine, refine.lr, steps)
    with torch.no_grad():
        return compose(disp0, u)


def compose(disp0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The displacement (B, 3, Z, Y, X) of ``phi0 o psi``, ``phi0(c) = c + disp0(c)`` and
    ``psi(c) = c + u(c)``, both canonical voxels on the fixed grid: ``u(c) + disp0(c + u(c))``,
    ``disp0`` read with border padding (a point pushed off the grid keeps the edge's value)."""
    return u + vxm_fn.spatial_transform(disp0, u, non_spatial_dims=(0, 1), padding_mode="border")


def _refine_velocity(velocity: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, refine: Refinement,
                     scale: int, steps: int, integration_steps: int) -> torch.Tensor:
    """``velocity`` (B, 3, Z, Y, X, canonical voxels) plus ``scale * upsample(dv)``, where the
    correction ``dv`` on the grid ``scale`` times coarser took ``steps`` Adam steps on the
    loss there (the factor turns coarse voxels into fine ones; at scale 1 nothing is resampled)."""
    shape = tuple(velocity.shape[2:])   # load_backend checked that scale divides it

    def integrate(v: torch.Tensor) -> torch.Tensor:   # scaling and squaring as the net integrates
        return vxm_fn.integrate_vec(v, integration_steps)

    if scale == 1:
        return velocity + _optimise(velocity, integrate, fixed, moving, refine, refine.lr, steps)
    fixed, moving = F.avg_pool3d(fixed, scale), F.avg_pool3d(moving, scale)
    base = F.avg_pool3d(velocity, scale) / scale   # the velocity in coarse voxels
    correction = _optimise(base, integrate, fixed, moving, refine, refine.lr / scale, steps)
    with torch.no_grad():
        return velocity + scale * F.interpolate(correction, size=shape, mode="trilinear", align_corners=False)


def _per_pair(fn: Callable[[np.ndarray, np.ndarray, Sequence[float], Any], np.ndarray], params: Any, grid: CanonicalGrid) -> DisplacementFn:
    return lambda jobs: [fn(f.image, m.image, grid.spacing, params) for f, m in jobs]


@dataclass(frozen=True)
class LearnedParams:
    batch: int = 8
    device: str = "cpu"
    # test-time Adam steps per pair on the velocity field (0: the net alone, whatever the other
    # refine options say). The default, coarse to fine (16 steps on a grid twice as coarse, then
    # 4 on the canonical grid), reached sitk-demons + 0.02 pair Dice on held-out pairs of all
    # three geometries measured at about a third of the cost of 16 canonical-grid steps, the
    # default before it (docs/RESULTS.md, issues 16 and 12)
    refine: int = 16
    refine_lr: float = 0.1    # their learning rate, canonical voxels per step
    refine_scale: int = 2     # take the refine steps on a grid this many times coarser per axis (Refinement.scale)
    refine_fine: int = 4      # then this many on the canonical grid (Refinement.fine_steps)
    # what those correct (Refinement.fine_field): 'composed' reached the same selection-set Dice
    # as 'velocity' within 0.006, under 0.02 % folded voxels, for two thirds of the time per pair
    # (docs/RESULTS.md, issue 12); 'velocity' keeps the cache keys of the default before it
    refine_fine_field: str = "composed"


@dataclass(frozen=True)
class ClassicalCommon:
    # '' = the pre-alignment handed to load_backend (a dataset's plan), else the project default
    prealign: str = ""


_CLASSICAL = {
    "sitk-demons": (DemonsParams, demons),
    "sitk-bspline": (BSplineParams, bspline),
    "ants-syn": (SynParams, ants_syn),
}


def _split_options(params_cls: type, options: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    own = {f.name for f in fields(params_cls)}
    return {k: v for k, v in options.items() if k in own}, {k: v for k, v in options.items() if k not in own}


def live_backend(net: RegistrationNet, config: RegConfig, device: torch.device, spec: str = "learned:live",
                 refine: Optional[Refinement] = None, batch: int = LearnedParams.batch) -> "CanonicalBackend":
    """A learned backend over a network that is still training (:mod:`joint.coupled`): it reads
    ``net``'s current weights at every call, up to ``batch`` pairs per forward pass, then
    refines each pair as ``refine`` says (None: the net alone). A pair's Field can differ by
    float noise with the pairs batched with it, so a caller that must reproduce its Fields
    exactly (a resumed run) asks for the same pairs in the same calls (:meth:`joint.oracle.
    RegistrationOracle.warm`). Its ``params`` say ``live``: never cache its Fields on disk,
    where they would be keyed as one fixed network's."""
    if batch < 1:
        raise ValueError(f"live_backend: batch must be >= 1, got {batch}")
    described = {"kind": "learned", "live": True, "config": config.to_dict(), **_refine_described(refine)}
    return CanonicalBackend(spec, config.grid, config.prealign, _learned_displacements(net, batch, device, refine),
                            described)


def learned_params(spec: str) -> LearnedParams:
    """The typed, checked options of a ``learned:CKPT?...`` spec (defaults filled in)."""
    parsed = parse_spec(spec)
    if parsed.kind != "learned":
        raise ValueError(f"backend {spec!r} is not a learned one ('learned:PATH/TO/CKPT')")
    params, _ = _typed_options(parsed, spec)
    return params


def refinement_of(params: LearnedParams, config: RegConfig, spec: str) -> Optional[Refinement]:
    """The test-time refinement ``params`` ask of a net trained with ``config`` (None for
    ``refine=0``); ValueError when ``refine_scale`` does not divide the net's canonical grid."""
    if not params.refine:
        return None
    if any(n % params.refine_scale for n in config.grid.shape):
        raise ValueError(f"backend {spec!r}: refine_scale={params.refine_scale} must divide the "
                         f"net's canonical grid {config.grid.shape}")
    return Refinement(params.refine, params.refine_lr, config.loss.similarity, tuple(config.loss.ncc_window),
                      config.loss.smoothness_weight, params.refine_scale, params.refine_fine, params.refine_fine_field)


def _refine_described(refine: Optional[Refinement]) -> dict[str, Any]:
    """A refinement's part of a backend's ``params`` (cache keys): only options that differ from
    the historical defaults, so Fields cached before those options existed keep their keys."""
    if refine is None:
        return {}
    return {"refine": refine.steps, "refine_lr": refine.lr,
            **({"refine_scale": refine.scale} if refine.scale != 1 else {}),
            **({"refine_fine": refine.fine_steps} if refine.fine_steps else {}),
            **({"refine_fine_field": refine.fine_field}
               if refine.fine_steps and refine.fine_field != "velocity" else {})}


def load_backend(spec: str, grid: Optional[CanonicalGrid] = None, prealign: Optional[PrealignConfig] = None) -> Backend:
    """The backend a spec names. ``grid`` and ``prealign`` set the canonical front end of the
    classical backends (default: the project defaults); the learned backend always uses the
    ones stored in its checkpoint. ValueError / FileNotFoundError for a bad spec or checkpoint."""
    s = parse_spec(spec)
    if s.kind == "identity":
        return IdentityBackend()
    params, common = _typed_options(s, spec)
    if s.kind == "learned":
        path = Path(s.path)  # type: ignore[arg-type]
        net, config = load_model(path)
        device = check_device(params.device, spec)
        described = {"kind": "learned", "checkpoint_sha256": file_sha256(path), "config": config.to_dict(), "batch": params.batch}
        refine = refinement_of(params, config, spec)
        described.update(_refine_described(refine))
        return CanonicalBackend(spec, config.grid, config.prealign,
                                _learned_displacements(net.to(device), params.batch, device, refine), described)
    _, fn = _CLASSICAL[s.kind]
    base = prealign or PrealignConfig()
    try:
        chosen = replace(base, method=common.prealign) if common.prealign else base
    except ValueError as exc:
        raise ValueError(f"backend {spec!r}: {exc}") from exc
    the_grid = grid or CanonicalGrid()
    if s.kind == "ants-syn":
        require_ants()
    described = {"kind": s.kind, **asdict(params), "grid": asdict(the_grid), "prealign": asdict(chosen)}
    return CanonicalBackend(spec, the_grid, chosen, _per_pair(fn, params, the_grid), described)


def backend_params(spec: str, grid: Optional[CanonicalGrid] = None, prealign: Optional[PrealignConfig] = None) -> dict[str, Any]:
    """Everything that determines the output of the backend ``load_backend`` would build, as
    plain (picklable, YAML-able) data, for cache keys: kind, every option with defaults
    filled in, the canonical front end and, for ``learned``, the checkpoint's SHA-256."""
    return load_backend(spec, grid, prealign).params
