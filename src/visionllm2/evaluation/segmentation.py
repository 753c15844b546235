"""Semantic-segmentation metrics (ADE20K style): confusion matrix, per-class IoU and accuracy, mIoU."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["reduce_zero_label", "confusion_matrix", "scores_from_confusion", "SegmentationEvaluator"]


def reduce_zero_label(label: np.ndarray, *, ignore_index: int = 255) -> np.ndarray:
    """ADE20K's label convention: 0 is "other" and is ignored, classes 1..150 become 0..149.

    Same as mmsegmentation's ``reduce_zero_label``: 0 -> ignore, v -> v - 1, and an ``ignore_index``
    already present stays ignored.
    """
    label = np.asarray(label).astype(np.int64)
    out = label - 1
    out[label == 0] = ignore_index
    out[label == ignore_index] = ignore_index
    return out


def _as_int_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: move to host memory without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer class-index map, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(
    pred: Any,
    target: Any,
    *,
    num_classes: int,
    ignore_index: int = 255,
    reduce_zero: bool = False,
) -> np.ndarray:
    """(C, C) int64 counts ``cm[t, p]`` of pixels with target class ``t`` predicted as ``p``.

    ``pred`` and ``target`` are integer maps of the same shape (e.g. (H, W)). Pixels whose target is
    ``ignore_index`` are skipped (after :func:`reduce_zero_label` when ``reduce_zero``); predictions
    must lie in [0, C) on the counted pixels, and other target values are an error too.
    """
    p = _as_int_array(pred, "pred")
    t = _as_int_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}; resize the prediction first")
    if reduce_zero:
        t = reduce_zero_label(t, ignore_index=ignore_index)
    valid = t != ignore_index
    p, t = p[valid], t[valid]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"target values must be in [0, {num_classes}) or {ignore_index} (ignored); found "
            f"{t.min()}..{t.max()}. For ADE20K raw annotations (0 = other) pass reduce_zero=True."
        )
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predicted classes must be in [0, {num_classes}); found {p.min()}..{p.max()}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # (C, C) rows target, cols prediction


def scores_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """mmsegmentation-style scores from a (C, C) confusion matrix.

    ``IoU_c = TP / (TP + FP + FN)`` and ``Acc_c = TP / (TP + FN)``; a class that never occurs in the
    ground truth *and* is never predicted has IoU NaN, one absent from the ground truth has Acc NaN,
    and NaNs are left out of ``mIoU`` / ``mAcc`` (numpy ``nanmean``). ``aAcc`` is the overall pixel
    accuracy. All values are fractions in [0, 1].
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


class SegmentationEvaluator:
    """Accumulates a confusion matrix over images, then reports :func:`scores_from_confusion`.

    Accumulating counts (rather than averaging per-image IoUs) is the ADE20K / mmsegmentation
    definition of mIoU over a dataset.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero: bool = False,
        class_names: list[str] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero = reduce_zero
        self.class_names = class_names
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add one image (or a batch of same-size images): integer maps of equal shape."""
        self.confusion += confusion_matrix(
            pred,
            target,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            reduce_zero=self.reduce_zero,
        )

    def merge(self, other: SegmentationEvaluator) -> None:
        """Add another evaluator's counts (e.g. from another process)."""
        if other.confusion.shape != self.confusion.shape:
            raise ValueError(f"cannot merge {other.confusion.shape} counts into {self.confusion.shape}")
        self.confusion += other.confusion

    def compute(self) -> dict[str, Any]:
        scores = scores_from_confusion(self.confusion)
        if self.class_names is not None:
            scores["per_class"] = {
                n: {"IoU": i, "Acc": a} for n, i, a in zip(self.class_names, scores["IoU"], scores["Acc"])
            }
        return scores
