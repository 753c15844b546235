"""Keypoint utilities: COCO keypoint names/sigmas, per-name sigmas for any skeleton, OKS."""

from __future__ import annotations

from collections.abc import Sequence

import torch

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# Per-keypoint falloff of COCO's object keypoint similarity (cocoapi, Ronchi & Perona 2017).
COCO_KEYPOINT_SIGMAS: tuple[float, ...] = (
    0.026,
    0.025,
    0.025,
    0.035,
    0.035,
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
)
# For keypoints COCO does not name (any skeleton, UniPose-style), a mid-range falloff.
DEFAULT_KEYPOINT_SIGMA = 0.05


def canonical_keypoint_name(name: str) -> str:
    """ "Left Eye" / "left-eye" / "left_eye" -> "left_eye", so prompts and tables agree."""
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def keypoint_sigmas(names: Sequence[str], *, default: float = DEFAULT_KEYPOINT_SIGMA) -> torch.Tensor:
    """(P,) OKS sigmas for keypoints named ``names``: COCO's where the name is a COCO keypoint,
    ``default`` otherwise."""
    table = dict(zip(COCO_KEYPOINT_NAMES, COCO_KEYPOINT_SIGMAS, strict=True))
    return torch.tensor([table.get(canonical_keypoint_name(n), default) for n in names], dtype=torch.float32)


def keypoint_oks(
    pred: torch.Tensor, gt: torch.Tensor, areas: torch.Tensor, sigmas: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """Pairwise object keypoint similarity, COCO's definition.

    pred:   (N, P, 2) predicted (x, y).
    gt:     (M, P, 3) ground truth (x, y, v); only keypoints with v > 0 count.
    areas:  (M,) object areas in the same units squared as the coordinates.
    sigmas: (P,) per-keypoint falloff, or (M, P) per ground truth (skeletons padded to one P).
    returns (N, M) OKS in [0, 1]; a ground truth with no labelled keypoint gets 0.

    OKS_nm = mean over labelled keypoints p of exp(-d^2 / (2 * area * (2 sigma_p)^2)).
    """
    if pred.shape[-2] != gt.shape[-2] or sigmas.shape[-1] != gt.shape[-2]:
        raise ValueError(
            f"keypoint counts disagree: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, "
            f"sigmas {tuple(sigmas.shape)}"
        )
    if sigmas.dim() == 1:
        sigmas = sigmas[None].expand(gt.shape[0], -1)
    n, m = pred.shape[0], gt.shape[0]
    # Every (prediction, ground truth) pair, scored as a matched pair.
    return matched_keypoint_oks(
        pred[:, None].expand(-1, m, -1, -1).flatten(0, 1),
        gt[None].expand(n, -1, -1, -1).flatten(0, 1),
        areas[None].expand(n, -1).flatten(),
        sigmas[None].expand(n, -1, -1).flatten(0, 1),
        eps=eps,
    ).view(n, m)


def matched_keypoint_oks(
    pred: torch.Tensor, gt: torch.Tensor, areas: torch.Tensor, sigmas: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """OKS of matched pairs: (n, P, 2) predictions against (n, P, 3) ground truth -> (n,).

    ``sigmas`` may be (P,) or (n, P) (per-instance skeletons padded to a common P)."""
    if sigmas.dim() == 1:
        sigmas = sigmas[None].expand(pred.shape[0], -1)
    variances = (2 * sigmas) ** 2  # (n, P)
    d2 = ((pred[..., :2] - gt[..., :2]) ** 2).sum(-1)  # (n, P)
    e = d2 / (2 * variances * (areas[:, None] + eps))
    visible = (gt[..., 2] > 0).float()
    return (torch.exp(-e) * visible).sum(-1) / visible.sum(-1).clamp(min=1)
