"""``cctr data``: make, look at and split datasets.

- ``phantom --out DIR --patients N [--seed S] [--kind cardiac|abdomen|isotropic] [--difficulty 1|2|3]
  [--layout nnunet|synapse] [--full-size]``: write a procedural phantom plus ``split.json``:
  the cardiac cine-MRI one (default, nnU-Net layout, :mod:`seg.data.phantom`), the abdominal
  CT one (nnU-Net or TransUNet's Synapse layout, CPU-sized or 512 x 512,
  :mod:`seg.data.phantom_abdomen`) or the isotropic CT one (nnU-Net layout,
  :mod:`seg.data.phantom_isotropic`);
- ``show DIR [--out PNG] [--cases K] [--slices S]``: a PNG montage with label overlays;
- ``summary DIR``: layout, case/patient counts, shapes, spacings, class fractions, split;
- ``split DIR --seed S [--out FILE]``: draw a train/val/test split with nested labeled sets
  from the labeled patients; patients without labels (``imagesUnlabeled/``) join train,
  outside every labeled set, and a split with nothing to train on is refused.

Every action reads folders with :func:`seg.data.readers.open_dataset` (``--layout`` forces one).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from cctr.seg.data.dataset import Dataset
from cctr.seg.data.montage import write_montage
from cctr.seg.data.phantom import PhantomConfig, write_phantom
from cctr.seg.data.phantom_abdomen import LAYOUTS as PHANTOM_LAYOUTS
from cctr.seg.data.phantom_abdomen import AbdomenPhantomConfig, write_abdomen_phantom
from cctr.seg.data.phantom_common import LEVELS
from cctr.seg.data.phantom_isotropic import write_isotropic_phantom
from cctr.seg.data.known_splits import KNOWN_SPLITS, known_split
from cctr.seg.data.readers import LAYOUTS, open_dataset
from cctr.seg.data.split import SPLIT_FILENAME, Split, draw_split, save_split
from cctr.seg.train_data import TEST_SUBSETS


def configure(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    ph = actions.add_parser("phantom", help="generate a procedural phantom: cardiac cine-MRI (default), abdominal "
                                             "or isotropic CT")
    ph.add_argument("--out", type=Path, required=True,
                    help="folder to create (an earlier phantom there is replaced, unless it holds files the phantom did not write)")
    ph.add_argument("--overwrite", action="store_true",
                    help="replace an earlier phantom folder even though it holds files no phantom wrote (they are deleted)")
    ph.add_argument("--patients", type=_positive_int, required=True,
                    help="number of patients (cardiac: two volumes each, ED and ES; abdomen, isotropic: one CT each)")
    ph.add_argument("--seed", type=_seed, default=0, help="same seed, same phantom (default 0)")
    ph.add_argument("--workers", type=_positive_int, default=None, help="processes (default: one per CPU)")
    ph.add_argument("--difficulty", type=int, choices=LEVELS, default=1,
                    help="cardiac and abdomen: how much subjects differ in anatomy, pose, field of view and "
                         "appearance; 1 (default) to 3")
    ph.add_argument("--kind", choices=("cardiac", "abdomen", "isotropic"), default="cardiac",
                    help="cardiac: ACDC-like cine MRI (default); abdomen: Synapse-like CT, 8 organs; isotropic: "
                         "CT of 2 mm cubic voxels, 80-100 per axis, 3 organs (a geometry the cardiac defaults "
                         "were not made for)")
    ph.add_argument("--layout", choices=PHANTOM_LAYOUTS, default="nnunet",
                    help="abdomen only: nnunet (default) or synapse (TransUNet's release: npz slices, h5 volumes, lists)")
    ph.add_argument("--full-size", action="store_true",
                    help="abdomen only: the real scans' 512 x 512 grid at 0.6-0.9 mm (default: 128 x 128, CPU-sized)")
    ph.set_defaults(func=run_phantom)

    sh = actions.add_parser("show", help="write a PNG montage of slices with label overlays")
    sh.add_argument("dir", type=Path, help="dataset folder")
    sh.add_argument("--out", type=Path, default=None, help="PNG to write (default: ./<folder name>_montage.png)")
    sh.add_argument("--cases", type=_positive_int, default=4, help="cases to show, one per row (default 4)")
    sh.add_argument("--slices", type=_positive_int, default=6, help="slices per case (default 6)")
    _layout_arg(sh)
    sh.set_defaults(func=run_show)

    su = actions.add_parser("summary", help="print what a dataset folder holds")
    su.add_argument("dir", type=Path, help="dataset folder")
    _layout_arg(su)
    su.set_defaults(func=run_summary)

    sp = actions.add_parser("split", help="draw a seeded train/val/test split by patient, with labeled sets")
    sp.add_argument("dir", type=Path, help="dataset folder")
    sp.add_argument("--seed", type=_seed, default=None, help="draw a random split from this seed")
    sp.add_argument("--known", choices=sorted(KNOWN_SPLITS), default=None,
                    help="write the field's published split instead (ACDC: SSL4MIS lists; Synapse: TransUNet lists)")
    sp.add_argument("--out", type=Path, default=None, help=f"split file to write (default: DIR/{SPLIT_FILENAME})")
    sp.add_argument("--val-fraction", type=_fraction, default=0.1)
    sp.add_argument("--test-fraction", type=_fraction, default=0.2)
    sp.add_argument("--labeled", type=_sizes, default=(1, 3, 7), help="labeled set sizes, comma separated (default 1,3,7)")
    _layout_arg(sp)
    sp.set_defaults(func=run_split)


def _layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=LAYOUTS, default=None, help="force a layout instead of detecting it")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"labeled set sizes must be positive, got {text!r}")
    return sizes


def _checked(kind: type, ok: Callable[[float], bool], need: str) -> Callable[[str], float]:
    """An argparse type: the text as ``kind``, refused unless ``ok(value)`` (``need`` says what is)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {value}")
        return value
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "at least 1")
_seed = _checked(int, lambda v: v >= 0, "a non-negative integer")
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def run_phantom(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.kind != "abdomen" and (args.layout != "nnunet" or args.full_size):
        raise ValueError("cctr data phantom: --layout synapse and --full-size are for --kind abdomen")
    if args.kind == "isotropic" and args.difficulty != 1:
        raise ValueError("cctr data phantom: --difficulty is for --kind cardiac and abdomen")
    if args.kind == "cardiac":
        out = write_phantom(args.out, args.patients, seed=args.seed, cfg=PhantomConfig.at_level(args.difficulty),
                            workers=args.workers, overwrite=args.overwrite)
        volumes = 2 * args.patients
    elif args.kind == "isotropic":
        out = write_isotropic_phantom(args.out, args.patients, seed=args.seed, workers=args.workers,
                                      overwrite=args.overwrite)
        volumes = args.patients
    else:
        cfg = (AbdomenPhantomConfig.full_size() if args.full_size else AbdomenPhantomConfig()).at_level(args.difficulty)
        out = write_abdomen_phantom(args.out, args.patients, seed=args.seed, cfg=cfg, layout=args.layout,
                                    workers=args.workers, overwrite=args.overwrite)
        volumes = args.patients
    print(f"wrote {args.patients} patients ({volumes} volumes) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def run_show(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dir, args.layout)
    out = args.out if args.out is not None else Path(f"{args.dir.resolve().name}_montage.png")
    write_montage(dataset, out, cases=args.cases, slices=args.slices)
    print(f"wrote {out}")
    return 0


@dataclass(frozen=True)
class DatasetSummary:
    layout: str
    root: Path
    class_names: tuple[str, ...]
    cases: int
    patients: int
    labeled: int
    shapes: np.ndarray  # (cases, 3) Z, Y, X
    spacings: np.ndarray  # (cases, 3) z, y, x mm
    class_voxels: np.ndarray  # (classes,) voxel counts over labeled cases
    split: Optional[Split]


def summarize(dataset: Dataset, progress: Optional[bool] = None) -> DatasetSummary:
    """Load every case once (lazily, one at a time) and gather :class:`DatasetSummary`."""
    shapes, spacings = [], []
    counts = np.zeros(len(dataset.class_names), dtype=np.int64)
    show = sys.stderr.isatty() if progress is None else progress
    for ref in tqdm(dataset.refs, desc="reading", unit="case", disable=not show):
        case = ref.load()
        shapes.append(case.shape)
        spacings.append(case.spacing)
        if case.label is not None:
            counts += np.bincount(case.label.ravel(), minlength=len(counts))[: len(counts)]
    return DatasetSummary(
        layout=dataset.layout,
        root=dataset.root,
        class_names=dataset.class_names,
        cases=len(dataset.refs),
        patients=len(dataset.patient_ids),
        labeled=sum(r.has_label for r in dataset.refs),
        shapes=np.array(shapes, dtype=int).reshape(-1, 3),
        spacings=np.array(spacings, dtype=float).reshape(-1, 3),
        class_voxels=counts,
        split=dataset.default_split,
    )


def _range(values: np.ndarray, fmt: str) -> str:
    lo, hi = values.min(), values.max()
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}-{format(hi, fmt)}"


def format_summary(s: DatasetSummary) -> str:
    lines = [
        f"folder:   {s.root}",
        f"layout:   {s.layout}",
        f"cases:    {s.cases} ({s.labeled} labeled, {s.cases - s.labeled} unlabeled)",
        f"patients: {s.patients}",
        f"classes:  {', '.join(f'{i} {n}' for i, n in enumerate(s.class_names))}",
    ]
    if s.cases:
        lines.append("shape (Z, Y, X):      " + " x ".join(_range(s.shapes[:, i], "d") for i in range(3)))
        lines.append("spacing (z, y, x) mm: " + " x ".join(_range(s.spacings[:, i], ".2f") for i in range(3)))
    total = int(s.class_voxels.sum())
    if total:
        fractions = ", ".join(f"{n} {100 * c / total:.2f}%" for n, c in zip(s.class_names, s.class_voxels))
        lines.append(f"class voxel fractions (labeled cases): {fractions}")
    if s.split is None:
        lines.append("split:    none (draw one with `cctr data split DIR --seed S`)")
    else:
        sets = ", ".join(f"{k}: {len(v)}" for k, v in s.split.labeled_sets.items()) or "none"
        lines.append(f"split:    train {len(s.split.train)}, val {len(s.split.val)}, test {len(s.split.test)} patients; "
                     f"labeled sets (patients) {sets}")
    return "\n".join(lines)


def run_summary(args: argparse.Namespace) -> int:
    # the plan is measured once and saved (DATA/cctr_plan.json)
    from cctr.joint.plan import format_plan, labeled_or_default, plan_for

    dataset = open_dataset(args.dir, args.layout)
    print(format_summary(summarize(dataset)))
    split = dataset.default_split
    print(format_plan(plan_for(dataset, split, labeled_or_default(split, None))))
    return 0


def run_split(args: argparse.Namespace) -> int:
    if (args.seed is None) == (args.known is None):
        raise ValueError("cctr data split: give exactly one of --seed S or --known NAME")
    dataset = open_dataset(args.dir, args.layout)
    if args.known is not None:
        split = known_split(args.known)
        split.check_patients(dataset.patient_ids, str(args.dir))
    else:
        labeled = {r.patient_id for r in dataset.refs if r.has_label}
        # unlabeled scans train (the unlabeled pool), except a release's own test scans, which no split names
        pool = [p for p in dataset.patient_ids if p not in labeled
                and not any(r.meta.get("subset") in TEST_SUBSETS for r in dataset.of_patients([p]))]
        split = draw_split([p for p in dataset.patient_ids if p in labeled], args.seed,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           labeled_sizes=args.labeled, unlabeled_ids=pool)
    out = args.out if args.out is not None else args.dir / SPLIT_FILENAME
    save_split(split, out)
    print(f"wrote {out}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} patients; "
          f"labeled sets {', '.join(split.labeled_sets) or 'none'}")
    return 0
