"""Tests of the shared box, mask and keypoint ops against hand computations and pycocotools."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from visionllm2.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    denormalize_boxes,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    inverse_sigmoid,
    masks_to_boxes,
    normalize_boxes,
)
from visionllm2.ops.keypoints import (
    COCO_KEYPOINT_NAMES,
    COCO_KEYPOINT_SIGMAS,
    DEFAULT_KEYPOINT_SIGMA,
    canonical_keypoint_name,
    keypoint_oks,
    keypoint_sigmas,
    matched_keypoint_oks,
)
from visionllm2.ops.masks import (
    mask_iou,
    mask_to_rle,
    masks_to_rles,
    point_sample,
    resize_masks,
    rle_to_mask,
    uncertain_point_coords,
)


def test_box_format_round_trip():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    assert torch.allclose(cxcywh[0], torch.tensor([30.0, 50.0, 40.0, 60.0]))
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), xyxy)


def test_box_iou_and_giou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 8.0]]))
    giou = generalized_box_iou(a, b)
    # overlapping: hull 3x3 = 9 -> 1/7 - (9-7)/9 ; disjoint: hull 6x2 = 12 -> 0 - (12-8)/12
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, -1 / 3]]))
    pairs = elementwise_generalized_box_iou(a.expand(2, -1), b)
    assert torch.allclose(pairs, giou[0])
    with pytest.raises(ValueError, match="equal shapes"):
        elementwise_generalized_box_iou(a, b)


def test_masks_to_boxes_follows_coco_pixel_convention():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 4, 7] = True  # single pixel -> (7, 4, 8, 5)
    masks[1, 2:6, 3:9] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[7, 4, 8, 5], [3, 2, 9, 6], [0, 0, 0, 0]]
    rle = mask_utils.encode(np.asfortranarray(masks[1].numpy().astype(np.uint8)))
    assert mask_utils.toBbox(rle).tolist() == [3, 2, 6, 4]  # pycocotools' xywh of the same mask


def test_normalize_denormalize_round_trip_and_inverse_sigmoid():
    boxes = torch.tensor([[20.0, 10.0, 60.0, 40.0]])
    norm = normalize_boxes(boxes, (200, 100))
    assert torch.allclose(norm, torch.tensor([[0.2, 0.25, 0.2, 0.3]]))
    assert torch.allclose(denormalize_boxes(norm, (200, 100)), boxes, atol=1e-4)
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x, atol=1e-5)
    with pytest.raises(ValueError, match="width, height"):
        normalize_boxes(boxes, (1, 2, 3))


def test_rle_round_trip_is_json_and_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((17, 23)) > 0.6
    rle = mask_to_rle(mask)
    json.dumps(rle)  # the result type promises JSON-serialisable masks
    assert rle["size"] == [17, 23]
    assert np.array_equal(rle_to_mask(rle), mask)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == mask.sum()
    assert np.array_equal(rle_to_mask(mask_to_rle(torch.from_numpy(mask))), mask)
    assert len(masks_to_rles(np.stack([mask, ~mask]))) == 2
    # uncompressed RLE (COCO crowd annotations): 3 zeros, 2 ones, 1 zero in column-major order
    assert rle_to_mask({"size": [2, 3], "counts": [3, 2, 1]}).T.flatten().tolist() == [0, 0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="size"):
        rle_to_mask({"counts": "x"})
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_rle(np.zeros((1, 2, 3), bool))


def test_resize_and_point_sample():
    masks = torch.zeros(1, 4, 4)
    masks[0, :, 2:] = 1.0
    up = resize_masks(masks, (8, 8), mode="nearest")
    assert up.shape == (1, 8, 8) and up[0, :, 4:].all() and not up[0, :, :4].any()
    assert resize_masks(torch.zeros(0, 4, 4), (2, 2)).shape == (0, 2, 2)
    # Sampling at pixel centres returns the pixel values exactly.
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # centres of (x0, y0) and (x3, y1)
    assert point_sample(img, coords).flatten().tolist() == [0.0, 7.0]


def test_uncertain_points_concentrate_on_the_boundary():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 32, 32), -10.0)
    logits[..., :, 16:] = 10.0
    logits[..., :, 15:17] = 0.0  # the only uncertain band: x in [15/32, 17/32)
    coords = uncertain_point_coords(logits, num_points=20, oversample_ratio=10, importance_sample_ratio=0.75)
    assert coords.shape == (1, 20, 2) and (coords >= 0).all() and (coords <= 1).all()
    # The 15 importance-sampled points lie where bilinear interpolation leaves |logit| < 10:
    # within about a pixel of the band (a 6/32 strip; uniform sampling would put 19% there).
    xs = coords[0, :15, 0]
    assert ((xs > 13 / 32) & (xs < 19 / 32)).all()


def test_mask_iou_by_hand():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 px
    a[1, :, :1] = True  # 4 px
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    b[0, :1] = True  # 4 px, inside a[0]; shares 1 px with a[1]
    assert torch.allclose(mask_iou(a, b), torch.tensor([[0.5], [1 / 7]]))


def test_keypoint_names_and_sigmas():
    assert canonical_keypoint_name(" Left-Eye ") == "left_eye"
    sig = keypoint_sigmas(["Left Eye", "tail_tip", "nose"])
    assert torch.allclose(sig, torch.tensor([0.025, DEFAULT_KEYPOINT_SIGMA, 0.026]))
    assert len(COCO_KEYPOINT_NAMES) == len(COCO_KEYPOINT_SIGMAS) == 17


def test_oks_matches_pycocotools():
    rng = np.random.default_rng(1)
    p = 17
    gts = []
    for i in range(2):
        kps = np.concatenate([rng.uniform(20, 80, (p, 2)), rng.integers(0, 3, (p, 1))], axis=1)
        kps[0, 2] = 2
        gts.append({"keypoints": kps.flatten().tolist(), "area": 900.0 + 300 * i, "bbox": [20, 20, 60, 60]})
    dts = [
        {"keypoints": (np.asarray(g["keypoints"]) + rng.normal(0, 3, 3 * p)).tolist(), "score": 0.9}
        for g in gts
    ]
    dts.append({"keypoints": np.asarray(gts[0]["keypoints"]).tolist(), "score": 0.5})
    ev = COCOeval(iouType="keypoints")
    sigmas = np.array(COCO_KEYPOINT_SIGMAS)
    ev.params.kpt_oks_sigmas = sigmas

    class _Fake:
        def __init__(self, g, d):
            self._gts = {(1, 1): g}
            self._dts = {(1, 1): d}

    fake = _Fake(gts, dts)
    ev._gts, ev._dts = fake._gts, fake._dts
    ev.params.maxDets = [100]
    expected = ev.computeOks(1, 1)  # (num_dt, num_gt)

    pred = torch.tensor(
        np.array([np.asarray(d["keypoints"]).reshape(p, 3)[:, :2] for d in dts]), dtype=torch.float64
    )
    gt = torch.tensor(np.array([np.asarray(g["keypoints"]).reshape(p, 3) for g in gts]), dtype=torch.float64)
    areas = torch.tensor([g["area"] for g in gts], dtype=torch.float64)
    got = keypoint_oks(pred, gt, areas, torch.tensor(sigmas), eps=float(np.spacing(1)))
    assert np.allclose(got.numpy(), expected, atol=1e-9)
    assert math.isclose(float(got[2, 0]), 1.0)
    diag = matched_keypoint_oks(pred[:2], gt, areas, torch.tensor(sigmas), eps=float(np.spacing(1)))
    assert torch.allclose(diag, got[[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="keypoint counts"):
        keypoint_oks(pred[:, :3], gt, areas, torch.tensor(sigmas))
