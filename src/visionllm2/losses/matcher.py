"""Hungarian matcher: the one-to-one assignment between object queries and ground truth, no grad."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from visionllm2.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from visionllm2.ops.keypoints import keypoint_oks
from visionllm2.ops.masks import point_sample

Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, target indices), both (m,) long


class HungarianMatcher(nn.Module):
    """Bipartite matching between Q predictions and n targets of each sample (DETR §3.1).

    The cost of pairing query q with target j is a weighted sum of a focal classification cost,
    the L1 and negative GIoU of their boxes and, when both sides carry them, a mask cost
    (sigmoid BCE + dice on shared random points, as Mask2Former) and a keypoint cost (L1 on
    labelled keypoints + 1 - OKS, as ED-Pose/UniPose). Weights default to the paper's loss
    weights (ARCHITECTURE.md §2) so matching and training agree on what "close" means.

    Inputs are per sample, because each sample names its own classes (open vocabulary):

    - ``outputs[s]``: ``logits`` (Q, C) over that sample's class links, ``boxes`` (Q, 4)
      normalised cxcywh, optionally ``masks`` (Q, h, w) logits and ``keypoints`` (Q, n, P, 2)
      (each query's keypoints for each target's skeleton, normalised xy).
    - ``targets[s]``: ``labels`` (n,) long in [0, C), ``boxes`` (n, 4), optionally ``masks``
      (n, H, W) float with ``has_mask`` (n,) bool, and ``keypoints`` (n, P, 3) with ``areas`` (n,)
      and ``sigmas`` (n, P).

    Returns one (query indices, target indices) pair per sample, ``min(Q, n)`` long.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        cost_keypoints: float = 10.0,
        cost_oks: float = 4.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_points: int = 1024,
    ) -> None:
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_keypoints = cost_keypoints
        self.cost_oks = cost_oks
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]
    ) -> list[Match]:
        if len(outputs) != len(targets):
            raise ValueError(f"matcher got {len(outputs)} predictions but {len(targets)} targets")
        return [self.match_one(out, tgt) for out, tgt in zip(outputs, targets, strict=True)]

    @torch.no_grad()
    def cost_matrix(self, out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        """(Q, n) matching cost of one sample."""
        labels = tgt["labels"]
        logits = out["logits"].float()
        if labels.numel() and int(labels.max()) >= logits.shape[1]:
            raise ValueError(f"target label {int(labels.max())} out of range for {logits.shape[1]} classes")
        prob = logits.sigmoid()[:, labels]  # (Q, n)
        # Focal-style class cost (Deformable DETR): reward confidence in the right class as the
        # focal loss would, so matching does not fight the loss.
        neg = (1 - self.focal_alpha) * prob**self.focal_gamma * -(1 - prob + 1e-8).log()
        pos = self.focal_alpha * (1 - prob) ** self.focal_gamma * -(prob + 1e-8).log()
        cost = self.cost_class * (pos - neg)

        boxes = out["boxes"].float()
        tgt_boxes = tgt["boxes"].float()
        cost = cost + self.cost_bbox * torch.cdist(boxes, tgt_boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(
            box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)
        )

        if out.get("masks") is not None and tgt.get("masks") is not None:
            cost = cost + self._mask_cost(out["masks"], tgt["masks"], tgt["has_mask"])
        if out.get("keypoints") is not None and tgt.get("keypoints") is not None:
            cost = cost + self._keypoint_cost(out["keypoints"], tgt)
        return cost

    @torch.no_grad()
    def match_one(self, out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> Match:
        device = out["boxes"].device
        n = tgt["labels"].shape[0]
        if n == 0 or out["boxes"].shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        cost = self.cost_matrix(out, tgt)
        if not torch.isfinite(cost).all():
            raise ValueError("matching cost has NaN/inf entries: check the decoder outputs for NaN")
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return (
            torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device),
        )

    def _mask_cost(self, pred: torch.Tensor, tgt: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        # The same random points for every pair keep the (Q, n) costs comparable.
        coords = torch.rand(1, self.num_points, 2, device=pred.device)
        p = point_sample(pred[:, None].float(), coords.expand(pred.shape[0], -1, -1))[:, 0]  # (Q, P)
        t = point_sample(tgt[:, None].float(), coords.expand(tgt.shape[0], -1, -1))[:, 0]  # (n, P)
        # BCE with logits, split into the positive and negative terms so it factorises into a matmul.
        pos = nn.functional.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
        neg = nn.functional.binary_cross_entropy_with_logits(p, torch.zeros_like(p), reduction="none")
        bce = (pos @ t.T + neg @ (1 - t).T) / p.shape[1]
        s = p.sigmoid()
        dice = 1 - (2 * s @ t.T + 1) / (s.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
        # Targets without a mask (box-only annotations) add no mask cost.
        return (self.cost_mask * bce + self.cost_dice * dice) * has_mask[None, :].float()

    def _keypoint_cost(self, pred: torch.Tensor, tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        gt = tgt["keypoints"].float()  # (n, P, 3)
        if pred.dim() == 3:  # (Q, P, 2): one skeleton shared by every target
            pred = pred[:, None].expand(-1, gt.shape[0], -1, -1)
        visible = (gt[..., 2] > 0).float()  # (n, P)
        l1 = ((pred.float() - gt[None, ..., :2]).abs().sum(-1) * visible[None]).sum(-1)  # (Q, n)
        oks = torch.stack(
            [
                keypoint_oks(
                    pred[:, j].float(), gt[j : j + 1], tgt["areas"][j : j + 1], tgt["sigmas"][j : j + 1]
                )[:, 0]
                for j in range(gt.shape[0])
            ],
            dim=1,
        )  # (Q, n)
        return self.cost_keypoints * l1 + self.cost_oks * (1 - oks)
