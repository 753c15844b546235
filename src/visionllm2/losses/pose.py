"""Set criterion of the pose decoder: instance class/box losses plus keypoint L1 and OKS."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from visionllm2.losses.grounding import GroundingCriterion
from visionllm2.losses.matcher import Match, PaddedTargets, flatten_matches, pad_targets
from visionllm2.ops.keypoints import matched_keypoint_oks

# Paper defaults (ARCHITECTURE.md §2): class 2, L1 box 5, GIoU 2, keypoint L1 10, OKS 4. The
# visibility term is ours: it gives each keypoint a meaningful score in the results.
POSE_LOSS_WEIGHTS: dict[str, float] = {
    "class": 2.0,
    "bbox": 5.0,
    "giou": 2.0,
    "keypoints": 10.0,
    "oks": 4.0,
    "visibility": 1.0,
}


class PoseCriterion(GroundingCriterion):
    """Hungarian-matched pose losses (ED-Pose / UniPose style).

    ``outputs`` as :class:`GroundingCriterion` (``logits`` over all of a sample's pose links,
    keypoint-name columns masked by ``class_valid``), plus ``keypoints`` (S, Q, G, P, 2)
    normalised xy for every query under every keypoint group (skeleton) of the sample,
    ``visibility`` (S, Q, G, P) logits, and ``keypoint_aux``: the same two for the earlier
    keypoint layers (scored with the final assignment).

    ``targets`` add ``keypoints`` (n, P, 3) normalised (x, y, v), ``group`` (n,) the skeleton
    index of each instance, ``areas`` (n,) normalised object areas, ``sigmas`` (n, P) OKS
    falloffs and ``keypoint_valid`` (n, P) which of the P slots exist in the skeleton.
    """

    loss_names = ("class", "bbox", "giou", "keypoints", "oks", "visibility")

    def __init__(self, *, match_keypoints: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # False: every layer is matched on class and box only, the final one too.
        self.match_keypoints = match_keypoints

    @classmethod
    def default_weights(cls) -> dict[str, float]:
        return dict(POSE_LOSS_WEIGHTS)

    def matcher_inputs(self, layer: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().matcher_inputs(layer)
        if self.match_keypoints and layer.get("keypoints") is not None:
            out["keypoints"] = layer["keypoints"]  # (S, Q, G, P, 2): targets pick their skeleton
        return out

    def layer_losses(
        self,
        layer: dict[str, Any],
        targets: PaddedTargets,
        indices: list[Match],
        class_valid: torch.Tensor,
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        losses = (
            super().layer_losses(layer, targets, indices, class_valid, num_boxes) if "logits" in layer else {}
        )
        if layer.get("keypoints") is not None:
            losses.update(self.keypoint_losses(layer, targets, indices, num_boxes))
        return losses

    def keypoint_losses(
        self,
        layer: dict[str, Any],
        targets: PaddedTargets,
        indices: list[Match],
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        batch_idx, query_idx, target_idx = flatten_matches(indices)
        if batch_idx.shape[0] == 0:
            zero = layer["keypoints"].sum() * 0.0 + layer["visibility"].sum() * 0.0
            return {"keypoints": zero, "oks": zero, "visibility": zero}
        group = targets.group[batch_idx, target_idx]
        pred_t = layer["keypoints"][batch_idx, query_idx, group]  # (m, P, 2)
        vis_t = layer["visibility"][batch_idx, query_idx, group]  # (m, P)
        gt_t = targets.keypoints[batch_idx, target_idx].to(pred_t)  # (m, P, 3)
        valid_t = targets.keypoint_valid[batch_idx, target_idx].to(pred_t)
        areas = targets.areas[batch_idx, target_idx].to(pred_t)
        sigmas = targets.sigmas[batch_idx, target_idx].to(pred_t)
        labelled = (gt_t[..., 2] > 0).to(pred_t.dtype)  # (m, P)
        l1 = ((pred_t - gt_t[..., :2]).abs().sum(-1) * labelled).sum() / num_boxes
        oks = matched_keypoint_oks(pred_t, gt_t, areas, sigmas)
        bce = F.binary_cross_entropy_with_logits(vis_t, labelled, reduction="none") * valid_t
        visibility = (bce.sum(-1) / valid_t.sum(-1).clamp(min=1)).sum() / num_boxes
        return {"keypoints": l1, "oks": (1 - oks).sum() / num_boxes, "visibility": visibility}

    def forward(
        self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], class_valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        padded = pad_targets(targets)  # once for every layer's matching and losses
        num_boxes = max(float(sum(padded.sizes)), 1.0)
        losses: dict[str, torch.Tensor] = {}
        # Final outputs: matched on class, box and keypoints together (UniPose's matcher), or on
        # class and box alone with match_keypoints=False.
        indices = self.match(outputs, padded)
        losses.update(self.weighted(self.layer_losses(outputs, padded, indices, class_valid, num_boxes), ""))
        # Earlier keypoint layers refine the same instances: score them with the final assignment.
        for i, aux in enumerate(outputs.get("keypoint_aux", [])):
            losses.update(self.weighted(self.keypoint_losses(aux, padded, indices, num_boxes), f"_kp{i}"))
        # Earlier instance layers and the encoder proposals: class + box only, matched anew.
        layers = [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux", []))]
        if outputs.get("enc") is not None:
            layers.append(("_enc", outputs["enc"]))
        for suffix, layer in layers:
            aux_indices = self.match(layer, padded)
            losses.update(
                self.weighted(self.layer_losses(layer, padded, aux_indices, class_valid, num_boxes), suffix)
            )
        return losses
