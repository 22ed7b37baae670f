"""The students' losses on hand-made tensors: known values, gradients, absent classes."""
from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from cctr.seg.losses import (
    ContrastConfig,
    ContrastPart,
    ExtraKeys,
    cross_teaching_loss,
    dice_loss,
    draw_anchors,
    pixel_contrastive_loss,
    sigmoid_rampup,
    supervised_loss,
)


def _contrast(parts, cfg=ContrastConfig(), extra=()):
    """The pixel contrastive loss of ``parts`` at anchors drawn as ``cfg`` says."""
    return pixel_contrastive_loss(parts, draw_anchors(parts, cfg), cfg.temperature, extra)


def _uniform_supervised_value(label: torch.Tensor, num_classes: int) -> float:
    """0.5 * (CE + 1 - mean Dice) of uniform predictions, computed by hand (smoothing 1e-5)."""
    n = label.numel()
    dices = []
    for c in range(num_classes):
        n_c = int((label == c).sum())
        inter = n_c / num_classes
        dices.append((2 * inter + 1e-5) / (n / num_classes + n_c + 1e-5))
    return 0.5 * (math.log(num_classes) + 1 - sum(dices) / num_classes)


def test_supervised_loss_of_uniform_prediction_matches_hand_computation():
    label = torch.tensor([[[0, 0, 1], [2, 1, 0]], [[0, 2, 2], [0, 0, 1]]])  # (B=2, H=2, W=3)
    logits = torch.zeros(2, 3, 2, 3)
    assert supervised_loss(logits, label).item() == pytest.approx(_uniform_supervised_value(label, 3), rel=1e-5)


def test_supervised_loss_of_confident_correct_prediction_is_near_zero_and_of_wrong_one_is_large():
    label = torch.tensor([[[0, 1], [2, 1]]])
    right = F.one_hot(label, 3).permute(0, 3, 1, 2).float() * 50.0
    wrong = F.one_hot((label + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50.0
    assert supervised_loss(right, label).item() < 1e-4
    assert supervised_loss(wrong, label).item() > 25.0  # CE alone is 50 / 2


def test_supervised_loss_has_gradients_and_no_nan_when_a_class_is_absent():
    label = torch.zeros(2, 4, 4, dtype=torch.int64)  # classes 1..3 absent
    label[0, 1:3, 1:3] = 2
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    loss = supervised_loss(logits, label)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cross_teaching_trains_on_the_teachers_argmax_without_touching_the_teacher():
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = cross_teaching_loss(student, teacher, "dice")
    assert loss.item() == pytest.approx(dice_loss(student, teacher.argmax(1)).item())
    loss.backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    agreeing = F.one_hot(teacher.argmax(1), 3).permute(0, 3, 1, 2).float() * 50.0
    for kind in ("dice", "ce", "dice+ce"):
        assert cross_teaching_loss(agreeing, teacher, kind).item() < 1e-4
    with pytest.raises(ValueError, match="cross-teaching loss"):
        cross_teaching_loss(student, teacher, "mse")


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0


def _two_class_part(b: int = 1, h: int = 4, w: int = 4):
    """Left half class 0 with embedding e0, right half class 1 with embedding e1 (orthogonal)."""
    classes = torch.zeros(b, h, w, dtype=torch.int64)
    classes[..., w // 2:] = 1
    emb = torch.zeros(b, 8, h, w)
    emb[:, 0][classes == 0] = 1.0
    emb[:, 1][classes == 1] = 1.0
    return emb.requires_grad_(True), classes


def test_contrastive_loss_matches_hand_value_for_separated_classes():
    emb, classes = _two_class_part()
    cfg = ContrastConfig(anchors_per_class=100, negatives_per_class=5, temperature=0.1, confidence=0.5)
    loss = _contrast([ContrastPart(emb, classes, torch.ones(classes.shape))], cfg)
    # every anchor: a.p = 1, and 5 negatives with a.n = 0
    assert loss.item() == pytest.approx(math.log(math.exp(10.0) + 5) - 10.0, rel=1e-5)
    collapsed = torch.zeros_like(emb)
    collapsed[:, 0] = 1.0  # every pixel the same embedding: a.p = a.n = 1
    bad = _contrast([ContrastPart(collapsed, classes, torch.ones(classes.shape))], cfg)
    assert bad.item() == pytest.approx(math.log(6.0), rel=1e-5)


def test_contrastive_loss_of_mixed_embeddings_has_gradients():
    emb = F.normalize(torch.randn(2, 16, 6, 6), dim=1).requires_grad_(True)
    classes = torch.randint(0, 3, (2, 6, 6))
    loss = _contrast([ContrastPart(emb, classes, torch.ones(2, 6, 6))], ContrastConfig(10, 10, 0.1, 0.5))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert emb.grad.abs().sum() > 0


def test_contrastive_loss_is_zero_not_nan_with_one_class_and_ignores_unconfident_pixels():
    emb, classes = _two_class_part()
    confidence = torch.ones(classes.shape)
    confidence[classes == 1] = 0.3  # class 1 not confident: only class 0 left
    parts = [ContrastPart(emb, classes, confidence)]
    assert draw_anchors(parts, ContrastConfig(confidence=0.5)) is None   # nothing to contrast
    loss = _contrast(parts, ContrastConfig(confidence=0.5))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(emb.grad).all()
    ignored = classes.clone()
    ignored[classes == 1] = -1
    assert _contrast([ContrastPart(emb, ignored, torch.ones(classes.shape))]).item() == 0.0


def test_contrastive_loss_samples_at_most_the_configured_number_of_anchors_per_class():
    emb, classes = _two_class_part(b=2, h=8, w=8)   # 64 pixels per class
    cfg = ContrastConfig(anchors_per_class=7, negatives_per_class=3, confidence=0.5)
    draw = draw_anchors([ContrastPart(emb, classes, torch.ones(classes.shape))], cfg, torch.Generator().manual_seed(0))
    index = draw.anchors_of(0).flat_index
    assert index.numel() == 14 and index.unique().numel() == 14
    picked = classes.reshape(-1)[index]
    assert int((picked == 0).sum()) == 7 and int((picked == 1).sum()) == 7
    assert draw.class_sizes == (7, 7) and draw.key_flat.numel() == 6
    assert torch.equal(classes.reshape(-1)[draw.key_flat], draw.key_class)


def _orthogonal_keys(n: int, valid: Optional[torch.Tensor] = None) -> ExtraKeys:
    key = torch.zeros(n, 8)
    key[:, 5] = 1.0  # orthogonal to every embedding: a.p = 0
    return ExtraKeys(key, torch.ones(n, dtype=torch.bool) if valid is None else valid)


def test_extra_positive_gets_flat_indices_of_its_own_part_and_changes_the_loss_by_hand_value():
    emb_a, classes = _two_class_part()
    emb_b, _ = _two_class_part()
    conf = torch.ones(classes.shape)
    cfg = ContrastConfig(anchors_per_class=100, negatives_per_class=5, temperature=0.1, confidence=0.5)
    parts = [ContrastPart(emb_a, classes, conf), ContrastPart(emb_b, classes, conf)]
    draw = draw_anchors(parts, cfg)
    anchors = draw.anchors_of(0)
    idx, cls = anchors.flat_index, anchors.classes
    assert idx.numel() == 16 and int(idx.min()) >= 0 and int(idx.max()) < classes.numel()
    assert torch.equal(cls, classes.reshape(-1)[idx])   # each anchor comes with the class it was drawn for
    assert draw.anchors_of(1).flat_index.numel() == 16
    loss = pixel_contrastive_loss(parts, draw, cfg.temperature, [_orthogonal_keys(idx.numel()), None])
    # part A holds half the 32 anchors; those average their two InfoNCE terms
    base = math.log(math.exp(10.0) + 5) - 10.0
    extra = math.log(1 + 5)
    expected = (16 * base + 16 * 0.5 * (base + extra)) / 32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(emb_a.grad).all() and emb_a.grad.abs().sum() > 0
    # no extra keys, or none valid: the plain loss
    plain = pixel_contrastive_loss(parts, draw, cfg.temperature)
    assert plain.item() == pytest.approx(base, rel=1e-5)
    none_valid = _orthogonal_keys(idx.numel(), torch.zeros(idx.numel(), dtype=torch.bool))
    assert pixel_contrastive_loss(parts, draw, cfg.temperature, [none_valid]).item() == pytest.approx(base, rel=1e-5)


def test_only_the_anchors_with_a_valid_extra_key_take_the_second_term():
    emb_a, classes = _two_class_part()
    emb_b, _ = _two_class_part()
    conf = torch.ones(classes.shape)
    cfg = ContrastConfig(anchors_per_class=100, negatives_per_class=5, temperature=0.1, confidence=0.5)
    parts = [ContrastPart(emb_a, classes, conf), ContrastPart(emb_b, classes, conf)]
    draw = draw_anchors(parts, cfg)
    anchors = draw.anchors_of(1)   # the keys go with part B's anchors, in their order
    valid = anchors.classes == 1
    loss = pixel_contrastive_loss(parts, draw, cfg.temperature, [None, _orthogonal_keys(valid.numel(), valid)])
    base = math.log(math.exp(10.0) + 5) - 10.0
    per_extra_anchor = 0.5 * (base + math.log(1 + 5))
    assert int(valid.sum()) == 8
    assert loss.item() == pytest.approx((24 * base + 8 * per_extra_anchor) / 32, rel=1e-5)


def test_contrast_options_are_checked():
    for bad, message in [({"pseudo_source": "mine"}, "pseudo_source"), ({"temperature": 0.0}, "temperature")]:
        with pytest.raises(ValueError, match=message):
            ContrastConfig(**bad)
    # only the mean of two InfoNCE terms remains: the option that chose among ways is gone
    from cctr.seg.config import TrainConfig, apply_overrides
    with pytest.raises(ValueError, match="unknown option"):
        apply_overrides(TrainConfig(), ["contrast.extra_positive_mode=mean-of-two"])


def test_pseudo_label_sources_teacher_own_and_agree():
    from cctr.seg.objective import contrast_pool, pseudo_labels

    # one sample, 2 classes, 1x3 pixels; logits (B, C, H, W)
    own = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 3.0, 1.0]]]])       # own argmax 0, 1, 1
    teacher = torch.tensor([[[[0.0, 0.0, 0.0]], [[1.0, 2.0, -2.0]]]])   # teacher argmax 1, 1, 0

    def sig(x: float) -> float:  # a 2-class softmax's top probability is the sigmoid of the logit gap
        return 1.0 / (1.0 + math.exp(-x))

    cls, conf = pseudo_labels("teacher", own, teacher)
    assert cls.tolist() == [[[1, 1, 0]]]
    assert conf[0, 0].tolist() == pytest.approx([sig(1.0), sig(2.0), sig(2.0)])
    cls, conf = pseudo_labels("own", own, teacher)
    assert cls.tolist() == [[[0, 1, 1]]]
    assert conf[0, 0].tolist() == pytest.approx([sig(2.0), sig(3.0), sig(2.0)])
    cls, conf = pseudo_labels("agree", own, teacher)
    assert cls.tolist() == [[[-1, 1, -1]]]  # only the middle pixel agrees
    assert conf[0, 0, 1].item() == pytest.approx(sig(2.0))  # the lower of 3 and 2
    # a labeled row keeps its ground truth at confidence 1 whatever the source
    cls, conf = contrast_pool("agree", own.repeat(2, 1, 1, 1), teacher.repeat(2, 1, 1, 1),
                              torch.tensor([[[1, 0, 1]], [[-1, -1, -1]]]), torch.tensor([True, False]))
    assert cls.tolist() == [[[1, 0, 1]], [[-1, 1, -1]]] and conf[0].tolist() == [[1.0, 1.0, 1.0]]
