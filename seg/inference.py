"""Slice-wise prediction of a 3D volume by one student, stacked back into the native grid, and
loading the students of a trainer checkpoint for it.

Each slice ``z`` of the volume ``(Z, Y, X)`` is resized to the training size with the same
matrix the trainer uses (:func:`seg.slices.resize_matrix`, no augmentation); the student's class
probabilities are mapped back onto the slice's native ``(Y, X)`` grid through the inverse
matrix (bilinear), and the argmax is the label. Intensities are normalised per volume as in
training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from cctr.seg.config import TrainConfig, from_dict, known_options
from cctr.seg.data.case import CaseError
from cctr.seg.slices import normalize_intensity, resample_slice, resize_matrix
from cctr.seg.students import build_student


# slices per forward pass at validation and prediction: a few MB of activations at any input size the
# presets use, so not an option
INFER_BATCH = 16


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image_zyx: np.ndarray,
    image_size: tuple[int, int],
    normalization: str = "zscore",
    batch_size: int = INFER_BATCH,
    window: Optional[tuple[float, float]] = None,
) -> np.ndarray:
    """Class probabilities ``(C, Z, Y, X)`` float32 of ``model`` on the raw volume ``image_zyx``."""
    volume = torch.from_numpy(normalize_intensity(image_zyx, normalization, window))
    z_count, vy, vx = volume.shape
    out_hw = (int(image_size[0]), int(image_size[1]))
    to_volume = resize_matrix((vy, vx), out_hw)
    to_sample = np.linalg.inv(to_volume)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, z_count, batch_size):
            zs = range(start, min(start + batch_size, z_count))
            batch = torch.stack([resample_slice(volume, z, to_volume, out_hw, "linear") for z in zs])[:, None]
            probs = torch.softmax(model(batch.to(device)).logits, dim=1).cpu()    # (S, C, H, W)
            s, c = probs.shape[:2]
            # every slice shares one matrix: resample all (slice, class) planes in one call
            planes = probs.reshape(s * c, 1, *out_hw)
            native = resample_slice(planes, 0, to_sample, (vy, vx), "linear", padding="border")
            chunks.append(native.reshape(s, c, vy, vx))
        return torch.cat(chunks).permute(1, 0, 2, 3).contiguous().numpy()
    finally:
        model.train(was_training)


def predict_labels(
    model: nn.Module,
    image_zyx: np.ndarray,
    image_size: tuple[int, int],
    normalization: str = "zscore",
    batch_size: int = INFER_BATCH,
    window: Optional[tuple[float, float]] = None,
) -> np.ndarray:
    """Label map ``(Z, Y, X)`` uint8 of ``model`` on ``image_zyx`` in its native grid."""
    return predict_probabilities(model, image_zyx, image_size, normalization, batch_size, window).argmax(axis=0).astype(np.uint8)


@dataclass(frozen=True)
class TrainedStudents:
    """What prediction needs from a checkpoint."""

    config: TrainConfig
    class_names: tuple[str, ...]
    students: Mapping[str, nn.Module]   # 'a' and, for two-student methods, 'b'; in eval mode
    step: int
    geometry: Optional[Mapping[str, Any]] = None  # seg.geometry_check statistics of the training cases, when stored

    def predict(self, image_zyx: np.ndarray, student: str = "a") -> np.ndarray:
        if student not in self.students:
            raise ValueError(f"no student {student!r} in this checkpoint; it has {sorted(self.students)}")
        cfg = self.config
        return predict_labels(self.students[student], image_zyx, cfg.image_size, cfg.normalization, INFER_BATCH,
                              cfg.intensity_window)


def read_checkpoint_dict(path: Path, required: tuple[str, ...] = ("config", "class_names", "students", "step")) -> dict:
    """The dict a segmentation checkpoint holds; :class:`CaseError` naming ``path`` when the
    file is missing, unreadable (truncated, text, foreign) or lacks a ``required`` key. For
    prediction and for the trainer's ``--resume``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    wrong = _not_torch_file(path)
    if wrong is not None:
        raise CaseError(f"{path}: {wrong}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for text, truncated or foreign files
        raise CaseError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise CaseError(f"{path}: not a cctr segmentation checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CaseError(f"{path}: not a cctr segmentation checkpoint (no {missing} entries)")
    return ckpt


def _not_torch_file(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a torch checkpoint, judged by its first bytes (torch writes a zip
    archive, older versions a pickle); ``None`` when it may be one. torch's own error for a
    text file reads ``KeyError: 101``."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None   # torch.load reports it
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file, not a checkpoint"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a checkpoint (neither the zip archive torch writes nor a pickle)"
    first = text.splitlines()[0][:40] if text.strip() else ""
    return f"a text file, not a checkpoint (it begins {first!r})"


def load_students(path: Path) -> TrainedStudents:
    """The students of a checkpoint written by :func:`seg.train.train`.

    Options the joint package adds to the config, and options of older versions, are ignored
    here: prediction needs only the students' architecture, the training size and the
    normalisation."""
    path = Path(path)
    ckpt = read_checkpoint_dict(path)
    try:
        cfg = from_dict(known_options(ckpt["config"], TrainConfig), TrainConfig(), where=str(path))
        class_names = tuple(ckpt["class_names"])
        students = {}
        for name, state in ckpt["students"].items():
            student_cfg = cfg.student_a if name == "a" else cfg.student_b
            model = build_student(student_cfg, len(class_names), cfg.embedding_dim)
            model.load_state_dict(state)
            students[name] = model.eval()
        step = int(ckpt["step"])
    except (KeyError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CaseError(f"{path}: not a cctr segmentation checkpoint ({type(exc).__name__}: {exc})") from exc
    geometry = ckpt.get("geometry")
    return TrainedStudents(cfg, class_names, students, step, geometry if isinstance(geometry, dict) else None)
