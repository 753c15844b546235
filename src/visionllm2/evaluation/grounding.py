"""Referring metrics: REC accuracy at IoU 0.5, referring-segmentation cIoU and gIoU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from visionllm2.inference.results import Detection
from visionllm2.ops.boxes import box_iou
from visionllm2.ops.masks import rle_to_mask

BoxLike = Detection | Sequence[float] | None
MaskLike = np.ndarray | dict[str, Any] | Detection | None


def _box_of(pred: BoxLike) -> list[float] | None:
    if pred is None:
        return None
    return list(pred.box) if isinstance(pred, Detection) else [float(v) for v in pred]


def rec_accuracy(
    predictions: Sequence[BoxLike], gt_boxes: Sequence[Sequence[float]], *, iou_threshold: float = 0.5
) -> float:
    """Referring expression comprehension Acc@0.5: the share of expressions whose predicted box
    (xyxy, a Detection, or None for "nothing predicted" = a miss) has IoU >= ``iou_threshold``
    with the referred object's box."""
    if len(predictions) != len(gt_boxes):
        raise ValueError(f"{len(predictions)} predictions for {len(gt_boxes)} expressions")
    if not predictions:
        raise ValueError("rec_accuracy needs at least one expression")
    hits = 0
    for pred, gt in zip(predictions, gt_boxes, strict=True):
        box = _box_of(pred)
        if box is None:
            continue
        iou = box_iou(
            torch.tensor([box], dtype=torch.float64), torch.tensor([list(gt)], dtype=torch.float64)
        )[0]
        hits += int(float(iou[0, 0]) >= iou_threshold)
    return hits / len(predictions)


def _mask_of(mask: MaskLike, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(mask, Detection):
        if mask.mask is None:
            raise ValueError("the Detection has no mask; enable the grounding decoder's mask branch")
        mask = mask.mask
    out = rle_to_mask(mask) if isinstance(mask, dict) else np.asarray(mask, dtype=bool)
    if out.shape != shape:
        raise ValueError(f"predicted mask has shape {out.shape} but the ground truth has {shape}")
    return out


def referring_segmentation_scores(
    predictions: Sequence[MaskLike], gt_masks: Sequence[np.ndarray]
) -> dict[str, float]:
    """Referring segmentation: cIoU (total intersection / total union over the set, favours large
    objects) and gIoU (mean of per-expression IoUs). Predictions are (H, W) bool masks, COCO
    RLEs, Detections with a mask, or None (empty). An expression whose prediction and ground
    truth are both empty scores IoU 1 in gIoU (gRefCOCO's convention for no-target phrases)."""
    if len(predictions) != len(gt_masks):
        raise ValueError(f"{len(predictions)} predictions for {len(gt_masks)} expressions")
    if not predictions:
        raise ValueError("referring_segmentation_scores needs at least one expression")
    total_inter = total_union = 0
    ious = []
    for pred, gt in zip(predictions, gt_masks, strict=True):
        gt_b = np.asarray(gt, dtype=bool)
        pred_b = _mask_of(pred, gt_b.shape)
        inter = int(np.logical_and(pred_b, gt_b).sum())
        union = int(np.logical_or(pred_b, gt_b).sum())
        total_inter += inter
        total_union += union
        ious.append(inter / union if union else 1.0)
    return {"cIoU": total_inter / total_union if total_union else 1.0, "gIoU": float(np.mean(ious))}
