"""Dataset readers: one per on-disk release the field uses, and :func:`open_dataset`, which
recognises a folder's layout and hands it to the right one.

Layouts: ``'acdc'`` (raw ACDC), ``'acdc-ssl4mis'`` (SSL4MIS's h5 release of ACDC),
``'synapse'`` (TransUNet's npz/h5 release), ``'nnunet'`` (nnU-Net raw layout, for your own
data). Every reader only indexes file names: cases are :class:`~seg.data.case.CaseRef`
objects that read their files on ``load()``. See ``docs/DATASETS.md``.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional

from cctr.seg.data.case import CaseError
from cctr.seg.data.dataset import Dataset
from cctr.seg.data.readers import acdc, nnunet, ssl4mis, synapse

# Detection order matters only for folders that look like several layouts at once, which
# detect_layout refuses; the order is the one messages list them in.
READERS: "MappingProxyType[str, tuple[Callable[[Path], bool], Callable[..., Dataset]]]" = MappingProxyType({
    acdc.LAYOUT: (acdc.looks_like, acdc.read_acdc),
    ssl4mis.LAYOUT: (ssl4mis.looks_like, ssl4mis.read_ssl4mis),
    synapse.LAYOUT: (synapse.looks_like, synapse.read_synapse),
    nnunet.LAYOUT: (nnunet.looks_like, nnunet.read_nnunet),
})
LAYOUTS = tuple(READERS)


def detect_layout(root: Path) -> str:
    """The layout of ``root``; :class:`CaseError` for a missing, empty, unknown or ambiguous folder."""
    root = Path(root)
    if not root.exists():
        raise CaseError(f"{root}: no such folder")
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder; point at the top folder of a dataset")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    if not entries:
        raise CaseError(f"{root}: empty folder; expected a dataset in one of the layouts {', '.join(LAYOUTS)}")
    matches = [name for name, (looks_like, _) in READERS.items() if looks_like(root)]
    if not matches:
        shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
        raise CaseError(
            f"{root}: unknown dataset layout (found {shown}); expected raw ACDC (patientXXX/ with Info.cfg, "
            "or training/), SSL4MIS ACDC (data/patientXXX_frameYY.h5), TransUNet Synapse (train_npz/, test_vol_h5/) "
            "or nnU-Net raw (dataset.json, imagesTr/); see docs/DATASETS.md"
        )
    if len(matches) > 1:
        raise CaseError(f"{root}: looks like several layouts ({', '.join(matches)}); pass layout= to choose one")
    return matches[0]


def open_dataset(root: Path, layout: Optional[str] = None, **options: Any) -> Dataset:
    """Open the dataset in ``root`` (layout auto-detected unless given) without reading any volume.

    ``options`` go to the layout's reader, e.g. ``spacing=(10, 1, 1)`` for SSL4MIS or
    Synapse, ``channel=1`` for nnU-Net; an option the reader does not take is a ``ValueError``.
    """
    root = Path(root)
    name = detect_layout(root) if layout is None else layout
    if name not in READERS:
        raise CaseError(f"{root}: unknown layout {name!r}; known layouts: {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise CaseError(f"{root}: no such folder")
    reader = READERS[name][1]
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    wrong = sorted(set(options) - set(accepted))
    if wrong:
        raise ValueError(f"layout {name!r} takes no option(s) {wrong}; it takes {accepted or 'none'}")
    return reader(root, **options)


__all__ = ["open_dataset", "detect_layout", "LAYOUTS", "READERS"]
