"""Tests of the Hungarian matcher and the grounding/pose set criteria on hand-made cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from visionllm2.losses.grounding import (
    GROUNDING_LOSS_WEIGHTS,
    GroundingCriterion,
    dice_loss,
    sigmoid_focal_loss,
)
from visionllm2.losses.matcher import HungarianMatcher, pad_targets
from visionllm2.losses.pose import POSE_LOSS_WEIGHTS, PoseCriterion


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _predictions(q: int, c: int, boxes: torch.Tensor, labels: torch.Tensor, slots: list[int]) -> dict:
    """Q queries, confident and exact at ``slots`` for the given targets, vague elsewhere."""
    logits = torch.full((q, c), _logit(0.01))
    out_boxes = torch.full((q, 4), 0.5)
    out_boxes[:, 2:] = 0.05
    for slot, box, label in zip(slots, boxes, labels, strict=True):
        logits[slot, label] = _logit(0.99)
        out_boxes[slot] = box
    return {"logits": logits, "boxes": out_boxes}


def _one(out: dict) -> dict:
    """One sample's outputs as the matcher's batch of one."""
    return {k: v[None] for k, v in out.items()}


def test_matcher_recovers_the_planted_assignment():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.8, 0.2, 0.1]])
    labels = torch.tensor([1, 0, 1])
    out = _predictions(6, 2, boxes, labels, slots=[4, 0, 2])
    ((q, j),) = HungarianMatcher()(_one(out), [{"labels": labels, "boxes": boxes}])
    assert dict(zip(j.tolist(), q.tolist(), strict=True)) == {0: 4, 1: 0, 2: 2}


def test_matcher_is_optimal_against_brute_force():
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    out = {"logits": torch.randn(5, 3), "boxes": torch.rand(5, 4) * 0.5 + 0.1}
    tgt = {"labels": torch.tensor([0, 2, 1]), "boxes": torch.rand(3, 4) * 0.5 + 0.1}
    cost = matcher.cost_matrix(_one(out), [tgt])[0]
    ((q, j),) = matcher(_one(out), [tgt])
    best = min(sum(float(cost[p[k], k]) for k in range(3)) for p in itertools.permutations(range(5), 3))
    assert math.isclose(float(cost[q, j].sum()), best, rel_tol=1e-6)


def test_matcher_empty_targets_and_bad_labels():
    matcher = HungarianMatcher()
    out = _one({"logits": torch.randn(4, 2), "boxes": torch.rand(4, 4)})
    ((q, j),) = matcher(out, [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}])
    assert q.numel() == j.numel() == 0
    with pytest.raises(ValueError, match="out of range"):
        matcher.cost_matrix(out, [{"labels": torch.tensor([5]), "boxes": torch.rand(1, 4)}])
    with pytest.raises(ValueError, match="2 targets"):
        matcher(out, [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}] * 2)
    out["boxes"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        matcher(out, [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}])


def test_batched_matching_equals_matching_each_sample_alone():
    """Targets padded to the largest count must not change any sample's assignment or costs."""
    torch.manual_seed(0)
    matcher = HungarianMatcher(num_points=64)
    s, q, c = 4, 6, 3
    out = {
        "logits": torch.randn(s, q, c),
        "boxes": torch.rand(s, q, 4) * 0.5 + 0.1,
        "masks": torch.randn(s, q, 8, 8),
    }
    targets = []
    for n, with_masks in zip([3, 0, 1, 5], [True, False, True, False], strict=True):
        t = {"labels": torch.randint(0, c, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.1}
        if with_masks:
            t["masks"] = (torch.rand(n, 16, 16) > 0.5).float()
            t["has_mask"] = torch.tensor([True, False, True][:n])
        targets.append(t)
    torch.manual_seed(1)
    together = matcher(out, targets)
    cost = matcher.cost_matrix(out, targets)
    for i, t in enumerate(targets):
        alone = {k: v[i : i + 1] for k, v in out.items()}
        torch.manual_seed(1)  # the mask cost's random points, drawn the same way
        ((qa, ja),) = matcher(alone, [t])
        qb, jb = together[i]
        assert qa.tolist() == qb.tolist() and ja.tolist() == jb.tolist()
        assert qb.numel() == min(q, t["labels"].shape[0])
        n = t["labels"].shape[0]
        if n and "masks" not in t:  # no mask cost: the padded batch's costs equal the sample's own
            assert torch.allclose(cost[i, :, :n], matcher.cost_matrix(alone, [t])[0])


def test_mask_and_keypoint_costs_pick_the_right_query():
    torch.manual_seed(0)
    matcher = HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
    gt_mask = torch.zeros(1, 16, 16)
    gt_mask[0, 4:12, 4:12] = 1
    pred_masks = torch.full((2, 16, 16), -8.0)
    pred_masks[1, 4:12, 4:12] = 8.0  # query 1 draws the object
    out = {"logits": torch.zeros(2, 1), "boxes": torch.rand(2, 4), "masks": pred_masks}
    tgt = {
        "labels": torch.tensor([0]),
        "boxes": torch.rand(1, 4),
        "masks": gt_mask,
        "has_mask": torch.tensor([True]),
    }
    out = _one(out)
    assert matcher(out, [tgt])[0][0].tolist() == [1]
    # A target without a mask adds no mask cost at all.
    tgt["has_mask"] = torch.tensor([False])
    assert torch.allclose(matcher.cost_matrix(out, [tgt])[0], torch.zeros(2, 1), atol=1e-5)

    gt_kps = torch.tensor([[[0.2, 0.2, 2], [0.4, 0.3, 2], [0.9, 0.9, 0]]])
    pred_kps = torch.stack([gt_kps[0, :, :2] + 0.2, gt_kps[0, :, :2]])[:, None]  # (Q, G, P, 2)
    out = _one({"logits": torch.zeros(2, 1), "boxes": torch.rand(2, 4), "keypoints": pred_kps})
    tgt = {
        "labels": torch.tensor([0]),
        "boxes": torch.rand(1, 4),
        "keypoints": gt_kps,
        "areas": torch.tensor([0.04]),
        "sigmas": torch.full((1, 3), 0.05),
        "group": torch.tensor([0]),
    }
    cost = matcher.cost_matrix(out, [tgt])[0]
    assert float(cost[1, 0]) == pytest.approx(0.0, abs=1e-5)  # exact keypoints: L1 0, OKS 1
    assert matcher(out, [tgt])[0][0].tolist() == [1]


def test_focal_and_dice_by_hand():
    logits = torch.tensor([0.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    p = torch.sigmoid(logits)
    want = torch.stack([0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]), 0.75 * p[1] ** 2 * -torch.log(1 - p[1])])
    assert torch.allclose(got, want)
    # Perfect (saturated) logits: dice ~0; all wrong: dice ~1.
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert float(dice_loss(torch.tensor([[20.0, 20.0, -20.0, -20.0]]), t)) == pytest.approx(0.0, abs=1e-3)
    # all wrong: 1 - (2 * 0 + 1) / (2 + 2 + 1), the +1 smoothing keeps empty masks finite
    assert float(dice_loss(torch.tensor([[-20.0, -20.0, 20.0, 20.0]]), t)) == pytest.approx(0.8, abs=1e-3)


def _criterion(**kw) -> GroundingCriterion:
    return GroundingCriterion(matcher=HungarianMatcher(num_points=256), num_points=256, **kw)


def test_grounding_criterion_scores_all_layers_and_is_near_zero_when_perfect():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])
    labels = torch.tensor([0, 1])
    masks = torch.zeros(2, 32, 32)
    masks[0, 6:13, 6:13] = 1
    masks[1, 14:24, 19:26] = 1
    pred = _predictions(5, 3, boxes, labels, slots=[3, 1])
    logits = pred["logits"][None].clone()
    logits[..., 2] = float("-inf")  # class 2 is padding in this sample
    pred_masks = torch.full((1, 5, 32, 32), -15.0)
    pred_masks[0, 3] = masks[0] * 30 - 15
    pred_masks[0, 1] = masks[1] * 30 - 15
    layer = {"logits": logits, "boxes": pred["boxes"][None], "masks": pred_masks}
    outputs = {**layer, "aux": [dict(layer)], "enc": {"logits": logits, "boxes": pred["boxes"][None]}}
    targets = [{"labels": labels, "boxes": boxes, "masks": masks, "has_mask": torch.tensor([True, True])}]
    class_valid = torch.tensor([[True, True, False]])
    losses = _criterion()(outputs, targets, class_valid)
    expected = {f"loss_{k}{s}" for k in GROUNDING_LOSS_WEIGHTS for s in ("", "_0")}
    expected |= {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    for name in ("loss_bbox", "loss_giou"):
        assert float(losses[name]) < 1e-3, name
    assert float(losses["loss_class"]) < 0.01
    # Masks: points concentrate on the (soft) boundary, so BCE stays above 0; compare against
    # the same predictions with the two masks swapped.
    swapped = pred_masks.clone()
    swapped[0, [3, 1]] = pred_masks[0, [1, 3]]
    bad = _criterion()({**layer, "masks": swapped}, targets, class_valid)
    assert float(losses["loss_mask"]) < 0.25 * float(bad["loss_mask"])
    assert float(losses["loss_dice"]) < 0.25 * float(bad["loss_dice"])

    # Moving a box increases exactly the box terms, by the weighted L1 and GIoU amounts.
    moved = dict(layer, boxes=layer["boxes"].clone())
    moved["boxes"][0, 3, 0] += 0.1
    worse = _criterion()({**moved, "aux": []}, targets, class_valid)
    assert float(worse["loss_bbox"]) == pytest.approx(5.0 * 0.1 / 2, rel=1e-4)
    assert float(worse["loss_giou"]) > 0.1


def test_criterion_weights_and_denoising_indices():
    crit = _criterion(weights={"class": 1.0, "mask": 0.0})
    assert crit.weights["class"] == 1.0 and crit.weights["bbox"] == 5.0
    with pytest.raises(ValueError, match="unknown loss weight"):
        _criterion(weights={"klass": 1.0})
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    logits = torch.zeros(1, 3, 1, requires_grad=True)
    pred_boxes = torch.full((1, 3, 4), 0.5, requires_grad=True)
    dn = {"logits": logits, "boxes": pred_boxes, "indices": [(torch.tensor([2]), torch.tensor([0]))]}
    outputs = {"logits": logits, "boxes": pred_boxes, "dn": dn}
    targets = [
        {"labels": torch.tensor([0]), "boxes": boxes, "masks": None, "has_mask": torch.tensor([False])}
    ]
    losses = crit(outputs, targets, torch.tensor([[True]]))
    assert {"loss_class_dn", "loss_bbox_dn", "loss_giou_dn"} <= set(losses)
    # The denoising query 2 is tied to target 0 by construction: its box error counts, L1 |0.5-0.2|*2.
    assert float(losses["loss_bbox_dn"]) == pytest.approx(5.0 * 0.6, rel=1e-5)
    sum(losses.values()).backward()
    assert pred_boxes.grad is not None and logits.grad is not None


def test_pose_criterion_keypoint_terms():
    crit = PoseCriterion(matcher=HungarianMatcher())
    assert crit.weights == POSE_LOSS_WEIGHTS
    gt_kps = torch.tensor([[[0.3, 0.3, 2.0], [0.5, 0.4, 1.0], [0.0, 0.0, 0.0]]])  # third slot is padding
    target = {
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[0.4, 0.35, 0.3, 0.2]]),
        "keypoints": gt_kps,
        "group": torch.tensor([0]),
        "areas": torch.tensor([0.06]),
        "sigmas": torch.full((1, 3), 0.05),
        "keypoint_valid": torch.tensor([[True, True, False]]),
    }
    q, g, p = 4, 1, 3
    logits = torch.full((1, q, 2), _logit(0.01))
    logits[0, 2, 0] = _logit(0.99)
    logits[..., 1] = float("-inf")  # a keypoint-name column: never a class
    boxes = torch.full((1, q, 4), 0.5)
    boxes[0, 2] = target["boxes"][0]
    kps = torch.rand(1, q, g, p, 2)
    kps[0, 2, 0] = gt_kps[0, :, :2]
    vis = torch.full((1, q, g, p), -10.0)
    vis[0, 2, 0, :2] = 10.0
    outputs = {"logits": logits, "boxes": boxes, "keypoints": kps, "visibility": vis, "keypoint_aux": []}
    losses = PoseCriterion(matcher=HungarianMatcher())(outputs, [target], torch.tensor([[True, False]]))
    for name in ("loss_keypoints", "loss_oks", "loss_bbox", "loss_giou", "loss_visibility"):
        assert float(losses[name]) < 1e-3, name
    kps2 = kps.clone()
    kps2[0, 2, 0, 0] += torch.tensor([0.1, 0.0])
    losses = crit({**outputs, "keypoints": kps2}, [target], torch.tensor([[True, False]]))
    assert float(losses["loss_keypoints"]) == pytest.approx(10.0 * 0.1, rel=1e-4)
    oks = (math.exp(-(0.1**2) / (2 * 0.06 * 0.1**2)) + 1) / 2
    assert float(losses["loss_oks"]) == pytest.approx(4.0 * (1 - oks), rel=1e-4)


def test_pose_criterion_can_match_the_final_layer_without_keypoints():
    """Query 0 has the exact box, query 1 the exact keypoints: the final layer's positive is
    query 1 when keypoints are matched (the default), query 0 when they are not."""
    target = {
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]]),
        "keypoints": torch.tensor([[[0.3, 0.3, 2.0], [0.5, 0.5, 2.0]]]),
        "group": torch.tensor([0]),
        "areas": torch.tensor([0.09]),
        "sigmas": torch.full((1, 2), 0.05),
        "keypoint_valid": torch.tensor([[True, True]]),
    }
    boxes = torch.tensor([[[0.4, 0.4, 0.3, 0.3], [0.45, 0.4, 0.3, 0.3]]])
    kps = torch.stack([target["keypoints"][0, :, :2] + 0.1, target["keypoints"][0, :, :2]])[None, :, None]
    outputs = {
        "logits": torch.zeros(1, 2, 1),
        "boxes": boxes,
        "keypoints": kps,
        "visibility": torch.zeros(1, 2, 1, 2),
        "keypoint_aux": [],
    }
    padded = pad_targets([target])
    for match_keypoints, query in ((True, 1), (False, 0)):
        crit = PoseCriterion(matcher=HungarianMatcher(), match_keypoints=match_keypoints)
        assert crit.match(outputs, padded)[0][0].tolist() == [query]
        losses = crit(outputs, [target], torch.tensor([[True]]))
        # The keypoint loss is the matched query's: 0 for query 1; for query 0, 2 keypoints each
        # off by 0.1 in x and y, L1 0.4, at weight 10.
        assert float(losses["loss_keypoints"]) == pytest.approx(0.0 if query else 10.0 * 0.4, abs=1e-5)
