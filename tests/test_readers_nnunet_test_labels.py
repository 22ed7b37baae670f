"""The nnU-Net reader's test cases: ``imagesTs/`` images are labeled exactly when
``labelsTs/`` holds their label map, and a ``labelsTs/`` map without its image is an error
rather than a test case silently left unlabeled."""
from __future__ import annotations

import numpy as np
import pytest

from layouts import affine_zyx, fake_volume, save_nifti_zyx, write_nnunet
from cctr.seg.data.case import CaseError
from cctr.seg.data.readers import open_dataset

SPACING = (8.0, 1.5, 1.25)


def add_test_case(root, case_id: str, image_name: str, with_label: bool) -> np.ndarray:
    image, label = fake_volume(7)
    affine = affine_zyx(SPACING)
    save_nifti_zyx(root / "imagesTs" / image_name, image, affine)
    if with_label:
        save_nifti_zyx(root / "labelsTs" / f"{case_id}.nii.gz", label, affine)
    return label


def test_test_cases_are_labeled_by_labels_ts(tmp_path):
    root = write_nnunet(tmp_path / "ds").root
    label = add_test_case(root, "t1", "t1_0000.nii.gz", with_label=True)
    add_test_case(root, "t2", "t2_0000.nii.gz", with_label=False)
    ds = open_dataset(root)
    t1, t2 = ds.ref("t1"), ds.ref("t2")
    assert t1.has_label and not t2.has_label and t1.meta["subset"] == "imagesTs"
    case = t1.load()
    assert np.array_equal(case.label, label) and case.spacing == SPACING


def test_a_test_label_without_its_image_names_the_expected_image(tmp_path):
    root = write_nnunet(tmp_path / "ds").root
    add_test_case(root, "t1", "t1.nii.gz", with_label=True)   # the image lacks its _0000 channel suffix
    with pytest.raises(CaseError, match=r"labelsTs/t1\.nii\.gz: label map without an image t1_0000\.nii\.gz in imagesTs/"):
        open_dataset(root)
