"""Box utilities shared by decoders, losses and metrics: format conversion, IoU, GIoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-x, centre-y, width, height -> (..., 4) x0, y0, x1, y1."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x0, y0, x1, y1 -> (..., 4) centre-x, centre-y, width, height."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area; degenerate boxes have area 0, never negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (..., N, 4) and (..., M, 4) xyxy boxes -> ((..., N, M) IoU, (..., N, M) union
    area); leading dimensions are a batch (one N x M matrix each)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # (..., N, M, 2)
    bottom_right = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # (..., N, M, 2)
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)  # (..., N, M)
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of (..., N, 4) and (..., M, 4) xyxy ->
    (..., N, M).

    GIoU stays informative when boxes do not overlap (IoU is then flat 0), which is why DETR-style
    set losses use it next to L1.
    """
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    hull = (bottom_right - top_left).clamp(min=0).prod(-1)  # (..., N, M)
    return iou - (hull - union) / hull.clamp(min=1e-12)


def elementwise_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of matched pairs: (n, 4) and (n, 4) xyxy -> (n,). Avoids the (n, n) matrix of the
    pairwise version when only the diagonal is needed (the loss on matched pairs)."""
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"matched boxes must have equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = inter.prod(-1)
    union = area1 + area2 - inter
    hull = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    hull = hull.prod(-1)
    return inter / union.clamp(min=1e-12) - (hull - union) / hull.clamp(min=1e-12)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, 4) xyxy pixel boxes that enclose every set pixel.

    A pixel (x, y) covers [x, x+1) x [y, y+1), so the box of a single pixel is (x, y, x+1, y+1),
    matching COCO's convention. Empty masks give an all-zero box.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    out = torch.zeros(n, 4, dtype=torch.float32, device=masks.device)
    if n == 0:
        return out
    masks = masks.bool()
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    nonempty = rows.any(dim=1)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    big = max(h, w) + 1
    out[:, 0] = torch.where(cols, xs, big).min(dim=1).values.float()
    out[:, 1] = torch.where(rows, ys, big).min(dim=1).values.float()
    out[:, 2] = torch.where(cols, xs, -1).max(dim=1).values.float() + 1
    out[:, 3] = torch.where(rows, ys, -1).max(dim=1).values.float() + 1
    out[~nonempty] = 0
    return out


def _size_scale(size: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(w, h) -> (4,) [w, h, w, h] on ``like``'s device and dtype."""
    size_t = torch.as_tensor(size, dtype=like.dtype, device=like.device)
    if size_t.shape[-1] != 2:
        raise ValueError(f"image size must be (width, height), got {tuple(size_t.shape)}")
    return torch.cat([size_t, size_t], dim=-1)


def normalize_boxes(boxes_xyxy: torch.Tensor, size: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(n, 4) xyxy in pixels of an image of ``size`` (w, h) -> (n, 4) cxcywh in [0, 1].

    Normalised coordinates are what the decoders predict: they are invariant to the squash
    resize that produces the decoder's square pixel input.
    """
    return box_xyxy_to_cxcywh(boxes_xyxy / _size_scale(size, boxes_xyxy)).clamp(0.0, 1.0)


def denormalize_boxes(boxes_cxcywh: torch.Tensor, size: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """(n, 4) normalised cxcywh -> (n, 4) xyxy in pixels of an image of ``size`` (w, h), clipped."""
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh).clamp(0.0, 1.0)
    return boxes * _size_scale(size, boxes)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with clamping, used to refine boxes additively in unbounded space."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
