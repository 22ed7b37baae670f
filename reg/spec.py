"""The registration backend spec: one string a user writes, parsed once into a typed
:class:`BackendSpec` that everything downstream reads (the oracle, coupled training, the gate,
the benchmark), so no caller slices the string itself.

Grammar: ``KIND[:PATH][?key=value&...]``::

    identity                           volumes overlaid centre on centre, nothing estimated
    learned:PATH/TO/CKPT               the trained network (reg.train), refined per pair by default
    learned:CKPT?refine=0              the net alone
    learned:CKPT?refine=16&refine_scale=2&refine_fine=4   the refinement (reg.refine.RefineConfig)
    sitk-demons?iterations=60&sigma_mm=1.5                 SimpleITK diffeomorphic demons
    sitk-bspline?mesh_mm=20&iterations=50                  SimpleITK B-spline
    ants-syn                           ANTs SyN via the optional antspyx package

``prealign=none|search|moments`` overrides a classical backend's pre-alignment (by default the
dataset's plan sets it; the learned one always uses its checkpoint's). Every option is typed and
range-checked here, before any work is done.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from cctr.reg.classical import BSplineParams, DemonsParams
from cctr.reg.prealign import METHODS as PREALIGN_METHODS
from cctr.reg.refine import RefineConfig

KINDS = ("identity", "learned", "sitk-demons", "sitk-bspline", "ants-syn")
CLASSICAL_PARAMS: dict[str, type] = {"sitk-demons": DemonsParams, "sitk-bspline": BSplineParams}
# spec key -> RefineConfig field
REFINE_KEYS = {"refine": "steps", "refine_scale": "scale", "refine_fine": "fine_steps"}

ClassicalParams = Union[DemonsParams, BSplineParams, None]


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec; :attr:`text` is the string it was parsed from.

    ``checkpoint``: the learned net's file (learned only). ``refine``: its test-time refinement.
    ``params``: a classical backend's own options (demons, B-spline; None for the others).
    ``prealign``: a classical backend's pre-alignment override, '' for the planned one.
    """

    text: str
    kind: str
    checkpoint: Optional[Path] = None
    refine: RefineConfig = RefineConfig()
    params: ClassicalParams = None
    prealign: str = ""

    @staticmethod
    def parse(text: str) -> "BackendSpec":
        """The spec ``text`` names; ValueError naming the spec and the problem otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty registration backend spec; expected one of {KINDS}")
        head, _, query = text.strip().partition("?")
        kind, _, path = head.partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown registration backend {text!r}; expected one of {KINDS} (learned as 'learned:PATH')")
        if kind == "learned" and not path:
            raise ValueError(f"backend {text!r}: give the checkpoint as 'learned:PATH/TO/CKPT'")
        if kind != "learned" and path:
            raise ValueError(f"backend {text!r}: only 'learned' takes a path")
        options: dict[str, str] = {}
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"backend {text!r}: option {item!r} is not key=value")
            options[key] = value
        try:
            return _typed(text.strip(), kind, path, options)
        except ValueError as exc:
            raise ValueError(f"backend {text!r}: {exc}") from exc

    @property
    def is_learned(self) -> bool:
        return self.kind == "learned"

    @property
    def runs_in_process(self) -> bool:
        """The learned net batches pairs itself and identity is free; the classical kinds run in
        worker processes of one thread each."""
        return self.kind in ("learned", "identity")

    @property
    def tag(self) -> str:
        """A short folder name: the kind, plus a hash of the whole spec when it has a path or options."""
        if self.text == self.kind:
            return self.kind
        return f"{self.kind}-{hashlib.blake2b(self.text.encode(), digest_size=4).hexdigest()}"

    def __str__(self) -> str:
        return self.text


def _typed(text: str, kind: str, path: str, options: dict[str, str]) -> BackendSpec:
    if kind == "identity":
        if options:
            raise ValueError("identity takes no options")
        return BackendSpec(text, kind)
    if kind == "learned":
        unknown = sorted(set(options) - set(REFINE_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(REFINE_KEYS)}")
        refine = replace(RefineConfig(), **{REFINE_KEYS[k]: _number(k, v, int) for k, v in options.items()})
        return BackendSpec(text, kind, checkpoint=Path(path), refine=refine)
    prealign = options.pop("prealign", "")
    if prealign and prealign not in PREALIGN_METHODS:
        raise ValueError(f"prealign must be one of {PREALIGN_METHODS}, got {prealign!r}")
    params_cls = CLASSICAL_PARAMS.get(kind)
    known = {f.name: f for f in fields(params_cls)} if params_cls else {}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted([*known, 'prealign'])}")
    params = None
    if params_cls is not None:
        defaults = params_cls()
        params = params_cls(**{k: _number(k, v, type(getattr(defaults, k))) for k, v in options.items()})
    return BackendSpec(text, kind, params=params, prealign=prealign)


def _number(key: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"option {key}={raw!r} is not a valid {kind.__name__}") from None
