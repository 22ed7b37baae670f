"""The two students: output layout, unit-norm embeddings, gradients to both heads, size checks."""
from __future__ import annotations

import pytest
import torch

from cctr.seg.config import preset
from cctr.seg.students import StudentConfig, StudentOutput, build_student

SMALL = {
    "unet": StudentConfig(kind="unet", widths=(4, 8, 16)),
    "swin": StudentConfig(kind="swin", feature_size=12, window_size=4),
}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_student_output_layout_and_unit_norm_embedding(kind):
    torch.manual_seed(0)
    model = build_student(SMALL[kind], num_classes=3)
    out = model(torch.randn(2, 1, 32, 64))
    assert isinstance(out, StudentOutput)
    assert out.logits.shape == (2, 3, 32, 64)
    assert out.features.shape[0] == 2 and out.features.shape[2:] == (32, 64)
    assert out.embedding.shape == (2, 128, 32, 64)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2, 32, 64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_both_heads_train_the_shared_network(kind):
    torch.manual_seed(0)
    model = build_student(SMALL[kind], num_classes=3)
    out = model(torch.randn(2, 1, 32, 64))
    out.embedding[:, 0].sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if n.startswith("classifier"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("projector"))
    shared = [g for n, g in grads.items() if not n.startswith(("classifier", "projector"))]
    assert any(g is not None and g.abs().sum() > 0 for g in shared)
    model.zero_grad()
    model(torch.randn(2, 1, 32, 64)).logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("projector"))


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_the_embedding_has_the_size_asked_for(kind):
    out = build_student(SMALL[kind], num_classes=3, embedding_dim=8)(torch.randn(1, 1, 64, 64))
    assert out.embedding.shape == (1, 8, 64, 64)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(1, 64, 64), atol=1e-5, rtol=0)


def test_options_that_became_constants_are_refused():
    # instance norm always; SwinUNETR's stages SWIN_DEPTHS / SWIN_HEADS; embedding_dim is the run's
    for gone in ("norm", "depths", "num_heads", "embedding_dim"):
        with pytest.raises(TypeError, match=gone):
            StudentConfig(kind="unet", **{gone: 1})
    unet = build_student(SMALL["unet"], 3)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in unet.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in unet.modules())


def test_the_two_students_are_different_networks():
    unet, swin = (build_student(SMALL[k], 4) for k in ("unet", "swin"))
    assert type(unet) is not type(swin)
    assert any("attn" in n for n, _ in swin.named_parameters())


def test_sizes_the_networks_cannot_take_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_student(SMALL["unet"], 3)(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        build_student(SMALL["swin"], 3)(torch.randn(1, 1, 48, 48))
    with pytest.raises(ValueError, match="larger than 32x32"):
        build_student(SMALL["swin"], 3)(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of 12"):
        build_student(StudentConfig(kind="swin", feature_size=16), 3)
    with pytest.raises(ValueError, match="unknown student kind"):
        build_student(StudentConfig(kind="resnet"), 3)


def test_paper_configuration_builds_larger_students_than_the_cpu_default():
    def size(cfg: StudentConfig) -> int:
        return sum(p.numel() for p in build_student(cfg, 4).parameters())

    paper, small = preset("paper"), preset("cpu-small")
    assert paper.image_size == (224, 224)
    assert paper.student_a.kind == small.student_a.kind == "unet"
    assert paper.student_b.kind == small.student_b.kind == "swin"
    assert size(paper.student_b) > 4 * size(small.student_b)
    assert size(paper.student_a) >= size(small.student_a)
