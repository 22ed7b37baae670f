"""TransUNet's release of the Synapse multi-organ CT data (Beckschen/TransUNet): training
volumes cut into 2D slices, test volumes whole, no geometry.

On disk (the lists ship in TransUNet's repository, ``lists/lists_Synapse/``; copy them next
to the data or pass ``lists_dir``)::

    train_npz/case0005_slice000.npz   'image' (or 'img') float32 (Y, X), 'label' (Y, X)
    test_vol_h5/case0001.npy.h5       'image' float32 (Z, Y, X), 'label' (Z, Y, X)
    lists_Synapse/train.txt           slice names, case by case
    lists_Synapse/test_vol.txt        volume names

Images are already clipped to [-125, 275] HU and scaled to [0, 1]. Training volumes are
stacked back from their slices in slice-number order. Case id = patient id = ``caseXXXX``.

Classes (:data:`SYNAPSE_CLASSES`): the release keeps 8 of the 13 BTCV organs, renumbered in
BTCV's own order: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver,
6 stomach, 7 aorta, 8 pancreas. Papers tabulate the organs alphabetically, which is not the
label order; pass ``class_names`` if your copy differs.

No spacing is stored. The ``spacing`` option (z, y, x) defaults to ``(1, 1, 1)``, so HD95
is in voxels, as TransUNet reports it; give ``{case_id: (z, y, x)}`` from the original BTCV
NIfTI headers for millimetres.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

from cctr.seg.data.case import Case, CaseError, CaseRef
from cctr.seg.data.dataset import Dataset, folder_split
from cctr.seg.data.known_splits import SYNAPSE_LABELED_SIZES, known_split_if_covered
from cctr.seg.data.readers.arrays import (Spacing, SpacingOption, array_case, list_file_names, numbered_files, read_arrays,
                                     spacing_lookup, stack_slices)
from cctr.seg.data.split import Split, split_with_prefix_sets

LAYOUT = "synapse"
SYNAPSE_CLASSES = (
    "background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta", "pancreas",
)
KEYS = {"image": ("image", "img"), "label": ("label",)}
_SLICE = re.compile(r"^(case\d{4})_slice(\d+)\.npz$")
_VOLUME = re.compile(r"^(case\d{4})\.npy\.h5$")
# Where a copy may keep TransUNet's list files, relative to the data folder.
_LIST_DIRS = ("lists/lists_Synapse", "lists_Synapse", ".")


def looks_like(root: Path) -> bool:
    return (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir()


def _index_slices(train_dir: Path) -> dict[str, list[Path]]:
    """Slice files of each training case, ordered by slice number, numbered from 000 without gaps."""
    out: dict[str, list[Path]] = {}
    for case_id, numbered in numbered_files(train_dir, _SLICE).items():
        for expected, (number, _) in enumerate(numbered):
            if number != expected:
                raise CaseError(f"{train_dir / f'{case_id}_slice{expected:03d}.npz'}: missing; "
                                f"slices of {case_id} must be numbered 000, 001, ... without gaps")
        out[case_id] = [p for _, p in numbered]
    return out


def _load(case_id: str, volume: Optional[Path], slices: list[Path], spacing: Callable[[str], Spacing],
          class_names: tuple[str, ...]) -> Case:
    if volume is not None:
        arrays = read_arrays(volume, KEYS)
        source = volume
    else:
        arrays = stack_slices(slices, KEYS)
        source = slices[0].parent / f"{case_id}_slice*.npz"
    return array_case(case_id, case_id, arrays["image"], arrays["label"], spacing(case_id), [source], class_names)


def _find_lists(root: Path, lists_dir: Optional[Path]) -> Optional[Path]:
    if lists_dir is not None:
        if not Path(lists_dir).is_dir():
            raise CaseError(f"{lists_dir}: lists_dir is not a folder")
        return Path(lists_dir)
    for rel in _LIST_DIRS:
        candidate = root / rel
        if (candidate / "train.txt").is_file() or (candidate / "test_vol.txt").is_file():
            return candidate
    return None


def _list_split(lists: Path, cases: Sequence[str]) -> Optional[Split]:
    """The release's split: train cases in ``train.txt`` order (labeled sets from its head)."""
    train_txt, test_txt = lists / "train.txt", lists / "test_vol.txt"
    train = [ln.split("_")[0] for ln in list_file_names(train_txt)] if train_txt.is_file() else []
    test = list_file_names(test_txt) if test_txt.is_file() else []
    if not train:
        return None
    split = split_with_prefix_sets(train, (), tuple(dict.fromkeys(test)), SYNAPSE_LABELED_SIZES)
    split.check_patients(cases, f"{lists} (train.txt/test_vol.txt)")
    return split


def read_synapse(
    root: Path,
    *,
    spacing: SpacingOption = (1.0, 1.0, 1.0),
    class_names: Sequence[str] = SYNAPSE_CLASSES,
    lists_dir: Optional[Path] = None,
) -> Dataset:
    """Index TransUNet's Synapse folder (``train_npz/``, ``test_vol_h5/``) by file names only.

    The default split is ``split.json`` in ``root`` if present, else the one the list files
    define, else :data:`seg.data.known_splits.SYNAPSE_SPLIT` when all its 30 cases are present.
    """
    root = Path(root)
    names = tuple(class_names)
    if len(names) < 2:
        raise CaseError(f"{root}: class_names must name background and at least one organ, got {names}")
    lookup = spacing_lookup(spacing, f"{root}: spacing option")
    slices = _index_slices(root / "train_npz")
    test_dir = root / "test_vol_h5"
    volumes = {m.group(1): p for p in (test_dir.iterdir() if test_dir.is_dir() else ()) if (m := _VOLUME.match(p.name))}
    cases = sorted(set(slices) | set(volumes))
    if not cases:
        raise CaseError(f"{root}: no train_npz/caseXXXX_sliceYYY.npz or test_vol_h5/caseXXXX.npy.h5 files")
    refs = []
    for case_id in cases:
        # A whole volume, when a copy has one, is read in one go rather than stacked.
        volume = volumes.get(case_id)
        refs.append(
            CaseRef(
                case_id=case_id,
                patient_id=case_id,
                has_label=True,
                loader=partial(_load, case_id, volume, slices.get(case_id, []), lookup, names),
                sources=(volume,) if volume is not None else (root / "train_npz" / f"{case_id}_slice*.npz",),
                meta={"subset": "test_vol_h5" if volume is not None else "train_npz"},
            )
        )
    lists = _find_lists(root, lists_dir)
    fallback = _list_split(lists, cases) if lists is not None else None
    if fallback is None:
        fallback = known_split_if_covered("synapse", cases)
    return Dataset(layout=LAYOUT, root=root, refs=tuple(refs), class_names=names,
                   default_split=folder_split(root, cases, fallback))
