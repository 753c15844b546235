"""Set criterion of the grounding decoder: focal class, L1 + GIoU boxes, BCE + dice masks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionllm2.losses.matcher import HungarianMatcher, Match, PaddedTargets, flatten_matches, pad_targets
from visionllm2.ops.boxes import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from visionllm2.ops.masks import point_sample, uncertain_point_coords

# Paper defaults (ARCHITECTURE.md §2): class 2, L1 box 5, GIoU 2, mask BCE 5, dice 5.
GROUNDING_LOSS_WEIGHTS: dict[str, float] = {"class": 2.0, "bbox": 5.0, "giou": 2.0, "mask": 5.0, "dice": 5.0}


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise focal loss (Lin et al. 2017) on logits; same shape as the inputs.

    With dot-product class logits this is the contrastive alignment loss of Grounding DINO:
    each (query, class link) pair is a binary "does this query show this class" decision.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(m, P) point logits and soft targets -> (m,) 1 - Dice coefficient (Milletari et al. 2016)."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


class GroundingCriterion(nn.Module):
    """Hungarian-matched losses of the grounding decoder, every decoder layer included.

    ``forward(outputs, targets, class_valid)``:

    - ``outputs``: ``logits`` (S, Q, C) over each sample's class links (padded to C),
      ``boxes`` (S, Q, 4) normalised cxcywh, ``masks`` (S, Q, h, w) logits or absent; ``aux`` a
      list of the same for the earlier decoder layers; ``enc`` the same for the selected encoder
      proposals (two-stage); ``dn`` the denoising queries' outputs with their fixed ``indices``
      (their own ``aux`` list too).
    - ``targets``: per sample ``labels`` (n,) long, ``boxes`` (n, 4), ``masks`` (n, H, W) float or
      ``None`` with ``has_mask`` (n,) bool.
    - ``class_valid``: (S, C) bool, which class columns the class loss scores: real links with
      a target (padding, and links whose target is ``None``, i.e. unannotated, are left out).

    Returns ``{"loss_class": ..., "loss_bbox": ..., "loss_class_0": ..., "loss_bbox_enc": ...,
    "loss_giou_dn": ...}``, each already multiplied by its weight, so the model just sums them.
    """

    loss_names: tuple[str, ...] = ("class", "bbox", "giou", "mask", "dice")

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        weights: dict[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        merged = dict(self.default_weights())
        for key, value in (weights or {}).items():
            if key not in merged:
                raise ValueError(f"unknown loss weight {key!r}; known: {sorted(merged)}")
            merged[key] = float(value)
        self.weights = merged
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @classmethod
    def default_weights(cls) -> dict[str, float]:
        return dict(GROUNDING_LOSS_WEIGHTS)

    # --- matching -------------------------------------------------------------------------
    def matcher_inputs(self, layer: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The view of one layer's outputs that the matcher scores. All class columns are kept:
        padding and unsupervised columns are never a target label, so never costed."""
        out = {"logits": layer["logits"], "boxes": layer["boxes"]}
        if layer.get("masks") is not None:
            out["masks"] = layer["masks"]
        return out

    def match(self, layer: dict[str, Any], targets: PaddedTargets) -> list[Match]:
        return self.matcher(self.matcher_inputs(layer), targets)

    # --- losses ---------------------------------------------------------------------------
    def layer_losses(
        self,
        layer: dict[str, Any],
        targets: PaddedTargets,
        indices: list[Match],
        class_valid: torch.Tensor,
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one set of predictions given its assignment."""
        logits = layer["logits"]
        batch_idx, query_idx, target_idx = flatten_matches(indices)
        labels = targets.labels[batch_idx, target_idx]

        # Class: every (query, class link) pair is a binary decision; unmatched queries are all-0.
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, labels] = 1.0
        valid = class_valid[:, None, :].expand_as(logits)
        focal = sigmoid_focal_loss(
            logits[valid], onehot[valid], alpha=self.focal_alpha, gamma=self.focal_gamma
        )
        losses = {"class": focal.sum() / num_boxes}

        src_boxes = layer["boxes"][batch_idx, query_idx]  # (m, 4)
        tgt_boxes = targets.boxes[batch_idx, target_idx].to(src_boxes)
        losses["bbox"] = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        losses["giou"] = (1 - giou).sum() / num_boxes

        if layer.get("masks") is not None:
            losses.update(self.mask_losses(layer["masks"], targets, batch_idx, query_idx, target_idx))
        return losses

    def mask_losses(
        self,
        masks: torch.Tensor,
        targets: PaddedTargets,
        batch_idx: torch.Tensor,
        query_idx: torch.Tensor,
        target_idx: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Point-sampled BCE + dice on matched queries whose target has a mask."""
        keep = (
            targets.has_mask[batch_idx, target_idx]
            if targets.masks is not None
            else torch.zeros_like(batch_idx, dtype=torch.bool)
        )
        if not keep.any():
            # Keep the graph connected so every mask parameter still receives a (zero) gradient.
            zero = masks.sum() * 0.0
            return {"mask": zero, "dice": zero}
        src = masks[batch_idx[keep], query_idx[keep]][:, None]  # (m, 1, h, w)
        tgt = targets.masks[batch_idx[keep], target_idx[keep]][:, None].to(src)  # (m, 1, H, W)
        with torch.no_grad():
            coords = uncertain_point_coords(
                src.float(),
                num_points=self.num_points,
                oversample_ratio=self.oversample_ratio,
                importance_sample_ratio=self.importance_sample_ratio,
            )
            tgt_points = point_sample(tgt, coords)[:, 0]  # (m, P)
        src_points = point_sample(src, coords)[:, 0]  # (m, P)
        num_masks = max(float(src.shape[0]), 1.0)
        return {
            "mask": F.binary_cross_entropy_with_logits(src_points, tgt_points, reduction="none").mean(1).sum()
            / num_masks,
            "dice": dice_loss(src_points, tgt_points).sum() / num_masks,
        }

    def weighted(self, losses: dict[str, torch.Tensor], suffix: str) -> dict[str, torch.Tensor]:
        return {
            f"loss_{k}{suffix}": v * self.weights[k] for k, v in losses.items() if self.weights.get(k, 0) != 0
        }

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], class_valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if len(targets) != outputs["logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for {outputs['logits'].shape[0]} samples")
        padded = pad_targets(targets)  # once for every layer's matching and losses
        num_boxes = max(float(sum(padded.sizes)), 1.0)
        losses: dict[str, torch.Tensor] = {}
        # Final layer, then every earlier layer (auxiliary losses, DETR §3.2), each matched anew.
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux", []))]
        if outputs.get("enc") is not None:
            layers.append(("_enc", outputs["enc"]))
        for suffix, layer in layers:
            indices = self.match(layer, padded)
            losses.update(
                self.weighted(self.layer_losses(layer, padded, indices, class_valid, num_boxes), suffix)
            )
        dn = outputs.get("dn")
        if dn is not None:
            # Denoising queries know their target by construction: no matching (DN-DETR).
            indices = dn["indices"]
            num_dn = max(float(sum(q.numel() for q, _ in indices)), 1.0)
            for suffix, layer in [("_dn", dn)] + [
                (f"_dn_{i}", aux) for i, aux in enumerate(dn.get("aux", []))
            ]:
                losses.update(
                    self.weighted(self.layer_losses(layer, padded, indices, class_valid, num_dn), suffix)
                )
        return losses
