"""seg.metrics against medpy (the field's reference implementation) and the empty-mask policy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from cctr.seg.metrics import (
    DIAGONAL,
    EMPTY_POLICIES,
    EmptyPolicy,
    EmptyScore,
    empty_policy,
    score_case,
    volume_diagonal_mm,
)

ANISOTROPIC = (10.0, 1.5, 1.5)


def random_labels(shape: tuple[int, int, int], num_classes: int, seed: int) -> np.ndarray:
    """Smooth random label map (Z, Y, X): blobby regions of every class, touching the border."""
    noise = np.random.default_rng(seed).random((num_classes,) + shape)
    return np.argmax(ndimage.gaussian_filter(noise, (0, 0.8, 2.5, 2.5)), axis=0).astype(np.uint8)


def assert_matches_medpy(pred: np.ndarray, ref: np.ndarray, spacing, num_classes: int) -> None:
    scores = score_case(pred, ref, spacing, num_classes)
    assert sorted(scores) == list(range(1, num_classes))
    for c, s in scores.items():
        p, t = pred == c, ref == c
        assert s.dice == pytest.approx(medpy_binary.dc(p, t), abs=1e-6)
        assert s.hd95 == pytest.approx(medpy_binary.hd95(p, t, voxelspacing=spacing), rel=1e-5)
        assert s.asd == pytest.approx(medpy_binary.asd(p, t, voxelspacing=spacing), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spacing", [ANISOTROPIC, (2.5, 0.7, 0.9)])
def test_random_label_maps_match_medpy(seed, spacing):
    pred = random_labels((8, 36, 40), 4, seed)
    ref = random_labels((8, 36, 40), 4, seed + 100)
    assert_matches_medpy(pred, ref, spacing, 4)


def test_small_objects_far_apart_in_a_large_volume_match_medpy():
    # the per-class crop to the bounding box of pred | ref must not change any distance
    pred = np.zeros((12, 64, 64), np.uint8)
    ref = np.zeros_like(pred)
    pred[2:4, 5:9, 50:60] = 1
    ref[8:11, 40:50, 3:7] = 1
    pred[6, 30:33, 30:33] = 2
    ref[5:8, 29:35, 28:33] = 2
    assert_matches_medpy(pred, ref, ANISOTROPIC, 3)


def test_single_voxels_give_their_distance_in_mm():
    pred = np.zeros((3, 4, 5), np.uint8)
    ref = np.zeros_like(pred)
    pred[0, 0, 0] = 1
    ref[1, 0, 3] = 1
    (s,) = score_case(pred, ref, ANISOTROPIC, 2).values()
    expected = math.hypot(10.0, 3 * 1.5)
    assert (s.dice, s.hd95, s.asd) == (0.0, pytest.approx(expected), pytest.approx(expected))


def test_identical_masks_score_perfectly():
    labels = random_labels((6, 20, 24), 3, seed=7)
    for s in score_case(labels, labels, ANISOTROPIC, 3).values():
        assert (s.dice, s.hd95, s.asd) == (1.0, 0.0, 0.0)


def test_asd_is_directed_from_prediction_to_truth():
    pred = np.zeros((6, 30, 30), np.uint8)
    ref = np.zeros_like(pred)
    ref[1:5, 5:25, 5:25] = 1
    pred[2:4, 12:16, 12:16] = 1
    (s,) = score_case(pred, ref, ANISOTROPIC, 2).values()
    forward = medpy_binary.asd(pred == 1, ref == 1, voxelspacing=ANISOTROPIC)
    backward = medpy_binary.asd(ref == 1, pred == 1, voxelspacing=ANISOTROPIC)
    assert s.asd == pytest.approx(forward) and abs(forward - backward) > 1.0


def test_bool_masks_are_class_one():
    pred = random_labels((5, 16, 16), 2, seed=3).astype(bool)
    ref = random_labels((5, 16, 16), 2, seed=4).astype(bool)
    as_ints = score_case(pred.astype(np.uint8), ref.astype(np.int64), ANISOTROPIC, 2)
    assert score_case(pred, ref, ANISOTROPIC, 2) == as_ints


# --- empty masks -------------------------------------------------------------------------

SHAPE = (4, 10, 12)
DIAG = math.sqrt(40.0**2 + 15.0**2 + 18.0**2)


def one_class_volumes(pred_filled: bool, ref_filled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 present or absent in each volume; class 2 always present in both (unaffected)."""
    pred = np.zeros(SHAPE, np.uint8)
    ref = np.zeros(SHAPE, np.uint8)
    pred[:, 6:, :] = 2
    ref[:, 6:, :] = 2
    if pred_filled:
        pred[1:3, 1:4, 1:5] = 1
    if ref_filled:
        ref[1:3, 2:5, 2:6] = 1
    return pred, ref


def test_volume_diagonal_is_extent_in_mm():
    assert volume_diagonal_mm(SHAPE, ANISOTROPIC) == pytest.approx(DIAG)


@pytest.mark.parametrize(
    "policy, pred_filled, ref_filled, expected",
    [
        ("penalty", False, False, (1.0, 0.0, 0.0)),
        ("penalty", False, True, (0.0, DIAG, DIAG)),
        ("penalty", True, False, (0.0, DIAG, DIAG)),
        ("ssl4mis", False, False, (0.0, 50.0, 10.0)),
        ("ssl4mis", False, True, (0.0, 50.0, 10.0)),
        ("ssl4mis", True, False, (0.0, 50.0, 10.0)),
        ("exclude", False, True, (0.0, math.nan, math.nan)),
        ("exclude", True, False, (0.0, math.nan, math.nan)),
        ("exclude", False, False, (math.nan, math.nan, math.nan)),
    ],
)
def test_empty_mask_presets(policy, pred_filled, ref_filled, expected):
    pred, ref = one_class_volumes(pred_filled, ref_filled)
    scores = score_case(pred, ref, ANISOTROPIC, 3, EMPTY_POLICIES[policy])
    got = (scores[1].dice, scores[1].hd95, scores[1].asd)
    assert got == pytest.approx(expected, nan_ok=True)
    assert (scores[2].dice, scores[2].hd95, scores[2].asd) == (1.0, 0.0, 0.0)


def test_default_policy_is_penalty_and_never_nan():
    for pred_filled, ref_filled in [(False, False), (False, True), (True, False)]:
        pred, ref = one_class_volumes(pred_filled, ref_filled)
        default = score_case(pred, ref, ANISOTROPIC, 3)
        assert default == score_case(pred, ref, ANISOTROPIC, 3, empty_policy("penalty"))
        assert all(not math.isnan(v) for s in default.values() for v in (s.dice, s.hd95, s.asd))


def test_custom_policy_scores_each_situation_separately():
    policy = EmptyPolicy(
        both_empty=EmptyScore(0.5, 1.0, 2.0),
        pred_empty=EmptyScore(0.0, 99.0, DIAGONAL),
        truth_empty=EmptyScore(0.25, DIAGONAL, 7.0),
    )
    results = {}
    for key, filled in {"both": (False, False), "pred": (False, True), "truth": (True, False)}.items():
        s = score_case(*one_class_volumes(*filled), ANISOTROPIC, 3, policy)[1]
        results[key] = (s.dice, s.hd95, s.asd)
    assert results["both"] == (0.5, 1.0, 2.0)
    assert results["pred"] == (0.0, 99.0, pytest.approx(DIAG))
    assert results["truth"] == (0.25, pytest.approx(DIAG), 7.0)


def test_class_absent_from_num_classes_range_scores_as_both_empty():
    pred, ref = one_class_volumes(True, True)
    scores = score_case(pred, ref, ANISOTROPIC, 5)
    assert sorted(scores) == [1, 2, 3, 4]
    assert (scores[4].dice, scores[4].hd95, scores[4].asd) == (1.0, 0.0, 0.0)


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, ref, spacing, num_classes, message",
    [
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), ANISOTROPIC, 2, "one shape"),
        (np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.uint8), ANISOTROPIC, 2, "3D"),
        (np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.uint8), ANISOTROPIC, 2, "integer"),
        (np.full((2, 3, 4), 3, np.uint8), np.zeros((2, 3, 4), np.uint8), ANISOTROPIC, 3, "outside 0..2"),
        (np.zeros((2, 3, 4), np.int16), np.full((2, 3, 4), -1, np.int16), ANISOTROPIC, 3, "outside"),
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8), (1.0, 0.0, 1.0), 2, "spacing"),
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8), (1.0, 1.0), 2, "spacing"),
        (np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8), ANISOTROPIC, 1, "num_classes"),
    ],
)
def test_bad_input_is_a_clear_error(pred, ref, spacing, num_classes, message):
    with pytest.raises(ValueError, match=message):
        score_case(pred, ref, spacing, num_classes)


def test_unknown_policy_name_is_an_error():
    with pytest.raises(ValueError, match="penalty"):
        empty_policy("lenient")


def test_policy_distance_must_be_a_number_or_diagonal():
    with pytest.raises(ValueError, match="diagonal"):
        EmptyScore(0.0, "diag", 1.0)
