"""Hungarian matcher: the one-to-one assignment between object queries and ground truth, no grad."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from visionllm2.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from visionllm2.ops.keypoints import matched_keypoint_oks
from visionllm2.ops.masks import point_sample

Match = tuple[torch.Tensor, torch.Tensor]  # (query indices, target indices), both (m,) long


def flatten_matches(indices: list[Match]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (query, target) index pairs -> flat (sample, query, target) index tensors,
    with a fixed number of ops whatever the number of samples."""
    counts = torch.tensor([q.shape[0] for q, _ in indices])
    device = indices[0][0].device
    batch_idx = torch.repeat_interleave(torch.arange(len(indices)), counts).to(device)
    return batch_idx, torch.cat([q for q, _ in indices]), torch.cat([j for _, j in indices])


class HungarianMatcher(nn.Module):
    """Bipartite matching between Q predictions and n targets of each sample (DETR §3.1).

    The cost of pairing query q with target j is a weighted sum of a focal classification cost,
    the L1 and negative GIoU of their boxes and, when both sides carry them, a mask cost
    (sigmoid BCE + dice on shared random points, as Mask2Former) and a keypoint cost (L1 on
    labelled keypoints + 1 - OKS, as ED-Pose/UniPose). Weights default to the paper's loss
    weights (ARCHITECTURE.md §2) so matching and training agree on what "close" means.

    The costs of all S samples are computed together, against targets padded to the largest n,
    and copied to the CPU once for the assignment: a handful of batched kernels and one device
    sync per call, whatever the number of samples (a per-sample loop made decoder training
    launch-bound on a GPU). Each sample still names its own classes (open vocabulary):

    - ``outputs``: ``logits`` (S, Q, C) over each sample's class links, ``boxes`` (S, Q, 4)
      normalised cxcywh, optionally ``masks`` (S, Q, h, w) logits and ``keypoints``
      (S, Q, G, P, 2): each query's keypoints under each of G skeletons, normalised xy.
    - ``targets[s]``: ``labels`` (n,) long in [0, C), ``boxes`` (n, 4), optionally ``masks``
      (n, H, W) float with ``has_mask`` (n,) bool, and ``keypoints`` (n, P, 3) with ``areas``
      (n,), ``sigmas`` (n, P) and ``group`` (n,), the skeleton (index into G) of each target.

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
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]] | PaddedTargets
    ) -> list[Match]:
        padded = targets if isinstance(targets, PaddedTargets) else pad_targets(targets)
        if not max(padded.sizes):  # nothing to match (and possibly no class column to score)
            empty = torch.zeros(0, dtype=torch.long, device=outputs["boxes"].device)
            return [(empty, empty) for _ in padded.sizes]
        cost = self.cost_matrix(outputs, padded).cpu()  # the one sync
        matches: list[tuple[np.ndarray, np.ndarray]] = []
        for s, n in enumerate(padded.sizes):
            block = cost[s, :, :n].numpy()
            if not np.isfinite(block).all():
                raise ValueError("matching cost has NaN/inf entries: check the decoder outputs for NaN")
            matches.append(linear_sum_assignment(block) if block.size else (np.zeros(0), np.zeros(0)))
        counts = [len(rows) for rows, _ in matches]
        flat = np.concatenate([np.concatenate([rows, cols]) for rows, cols in matches])
        parts = (
            torch.as_tensor(flat, dtype=torch.long).to(outputs["boxes"].device).split([2 * c for c in counts])
        )
        return [(p[:c], p[c:]) for p, c in zip(parts, counts, strict=True)]

    @torch.no_grad()
    def cost_matrix(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]] | PaddedTargets
    ) -> torch.Tensor:
        """(S, Q, N) matching costs, N the largest target count; columns past a sample's own n
        are padding (their values mean nothing)."""
        tgt = targets if isinstance(targets, PaddedTargets) else pad_targets(targets)
        logits = outputs["logits"].float()
        if len(tgt.sizes) != logits.shape[0]:
            raise ValueError(f"matcher got {logits.shape[0]} predictions but {len(tgt.sizes)} targets")
        if tgt.max_label >= logits.shape[2]:
            raise ValueError(f"target label {tgt.max_label} out of range for {logits.shape[2]} classes")
        q = logits.shape[1]
        prob = logits.sigmoid().gather(2, tgt.labels[:, None, :].expand(-1, q, -1))  # (S, Q, N)
        # Focal-style class cost (Deformable DETR): reward confidence in the right class as the
        # focal loss would, so matching does not fight the loss.
        neg = (1 - self.focal_alpha) * prob**self.focal_gamma * -(1 - prob + 1e-8).log()
        pos = self.focal_alpha * (1 - prob) ** self.focal_gamma * -(prob + 1e-8).log()
        cost = self.cost_class * (pos - neg)

        boxes = outputs["boxes"].float()
        cost = cost + self.cost_bbox * torch.cdist(boxes, tgt.boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(
            box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt.boxes)
        )
        if outputs.get("masks") is not None and tgt.masks is not None:
            cost = cost + self._mask_cost(outputs["masks"], tgt)
        if outputs.get("keypoints") is not None and tgt.keypoints is not None:
            cost = cost + self._keypoint_cost(outputs["keypoints"], tgt)
        return cost

    def _mask_cost(self, pred: torch.Tensor, tgt: PaddedTargets) -> torch.Tensor:
        s, q = pred.shape[:2]
        n = tgt.labels.shape[1]
        # The same random points for every pair keep the (Q, n) costs comparable.
        coords = torch.rand(1, self.num_points, 2, device=pred.device)
        p = point_sample(pred.flatten(0, 1)[:, None].float(), coords.expand(s * q, -1, -1)).view(s, q, -1)
        t = point_sample(tgt.masks.flatten(0, 1)[:, None], coords.expand(s * n, -1, -1)).view(s, n, -1)
        # BCE with logits as a matmul: per point softplus(p) - p * t, summed over the points.
        t_t = t.transpose(1, 2)
        bce = (nn.functional.softplus(p).sum(-1)[..., None] - p @ t_t) / p.shape[-1]  # (S, Q, N)
        sig = p.sigmoid()
        dice = 1 - (2 * sig @ t_t + 1) / (sig.sum(-1)[..., None] + t.sum(-1)[:, None, :] + 1)
        # Targets without a mask (box-only annotations) add no mask cost.
        return (self.cost_mask * bce + self.cost_dice * dice) * tgt.has_mask[:, None, :].float()

    def _keypoint_cost(self, pred: torch.Tensor, tgt: PaddedTargets) -> torch.Tensor:
        s, q, _, p, _ = pred.shape
        n = tgt.labels.shape[1]
        # Every query's keypoints under each target's own skeleton: (S, Q, N, P, 2).
        per_target = pred.float().gather(2, tgt.group[:, None, :, None, None].expand(-1, q, -1, p, 2))
        gt = tgt.keypoints  # (S, N, P, 3)
        visible = (gt[..., 2] > 0).float()  # (S, N, P)
        l1 = ((per_target - gt[:, None, ..., :2]).abs().sum(-1) * visible[:, None]).sum(-1)  # (S, Q, N)
        oks = matched_keypoint_oks(
            per_target.flatten(0, 2),
            gt[:, None].expand(-1, q, -1, -1, -1).flatten(0, 2),
            tgt.areas[:, None].expand(-1, q, -1).flatten(),
            tgt.sigmas[:, None].expand(-1, q, -1, -1).flatten(0, 2),
        ).view(s, q, n)
        return self.cost_keypoints * l1 + self.cost_oks * (1 - oks)


@dataclass
class PaddedTargets:
    """Per-sample targets stacked to (S, N, ...), N the largest count (at least 1); rows past a
    sample's own count are filler that no cost the matcher reads depends on. ``masks`` is set
    when any sample has masks (zeros and ``has_mask`` False elsewhere), ``keypoints`` (with
    ``areas``, ``sigmas``, ``group`` and, where given, ``keypoint_valid``) when every sample has
    keypoints."""

    sizes: list[int]
    max_label: int
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None
    keypoints: torch.Tensor | None = None
    areas: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None
    group: torch.Tensor | None = None
    keypoint_valid: torch.Tensor | None = None


def pad_targets(targets: list[dict[str, torch.Tensor]]) -> PaddedTargets:
    """Stack the targets of S samples once; a criterion reuses the result for every layer it matches."""
    if not targets:
        raise ValueError("the matcher needs at least one sample")
    sizes = [int(t["labels"].shape[0]) for t in targets]
    n = max(sizes + [1])
    labels = _stack([t["labels"] for t in targets], n, 0)
    out = PaddedTargets(
        sizes=sizes,
        max_label=int(labels.max()) if max(sizes) else -1,
        labels=labels,
        boxes=_stack([t["boxes"].float() for t in targets], n, 0.5),  # filler: the whole image
    )
    with_masks = [t["masks"] for t in targets if t.get("masks") is not None]
    if with_masks:
        none = labels.new_zeros(0, *with_masks[0].shape[-2:], dtype=torch.float32)
        out.masks = _stack([none if t.get("masks") is None else t["masks"].float() for t in targets], n, 0.0)
        out.has_mask = _stack(
            [
                none.new_zeros(0, dtype=torch.bool) if t.get("masks") is None else t["has_mask"]
                for t in targets
            ],
            n,
            False,
        )
    with_keypoints = sum(t.get("keypoints") is not None for t in targets)
    if with_keypoints and with_keypoints < len(targets):
        raise ValueError("either every sample's targets carry keypoints or none do")
    if with_keypoints:
        out.keypoints = _stack([t["keypoints"].float() for t in targets], n, 0.0)
        out.areas = _stack([t["areas"].float() for t in targets], n, 1.0)
        out.sigmas = _stack([t["sigmas"].float() for t in targets], n, 1.0)
        out.group = _stack([t["group"] for t in targets], n, 0)
        if all(t.get("keypoint_valid") is not None for t in targets):
            out.keypoint_valid = _stack([t["keypoint_valid"] for t in targets], n, False)
    return out


def _stack(rows: list[torch.Tensor], n: int, value: float) -> torch.Tensor:
    """(n_i, ...) tensors -> (S, n, ...), rows past each n_i set to ``value``."""
    out = pad_sequence(rows, batch_first=True, padding_value=value)
    if out.shape[1] < n:  # every row empty
        out = torch.cat([out, out.new_full((len(rows), n - out.shape[1], *out.shape[2:]), value)], 1)
    return out
