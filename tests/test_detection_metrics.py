"""Tests of COCO box/mask/keypoint AP, REC accuracy and referring-segmentation IoUs on hand-made cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from visionllm2.data.sample import LinkTarget
from visionllm2.evaluation.detection import GroundTruth, coco_evaluate, ground_truth_from_targets
from visionllm2.evaluation.grounding import rec_accuracy, referring_segmentation_scores
from visionllm2.inference.results import Detection, SemanticMap
from visionllm2.ops.masks import mask_to_rle

SIZE = (200, 150)  # (w, h)


def _box_mask(box: list[float]) -> np.ndarray:
    m = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    m[y0:y1, x0:x1] = True
    return m


def test_perfect_predictions_score_one_and_none_score_zero():
    gts = [[GroundTruth("circle", [10, 10, 60, 60]), GroundTruth("square", [100, 40, 180, 120])]]
    preds = [[Detection("circle", 0.9, [10, 10, 60, 60]), Detection("square", 0.8, [100, 40, 180, 120])]]
    r = coco_evaluate(preds, gts, [SIZE])
    assert r["bbox/AP"] == pytest.approx(1.0) and r["bbox/AR100"] == pytest.approx(1.0)
    # Results of other kinds in the list (e.g. a SemanticMap) are ignored.
    preds[0].append(SemanticMap(labels=["sky"], classes=np.zeros((2, 2), np.int32)))
    assert coco_evaluate(preds, gts, [SIZE])["bbox/AP"] == pytest.approx(1.0)
    assert coco_evaluate([[]], gts, [SIZE])["bbox/AP"] == 0.0


def test_ranking_a_false_positive_first_gives_the_101_point_value():
    # Two objects; the top-scored detection is a false positive, the second hits object A,
    # object B is missed: precision 1/2 up to recall 1/2, then nothing. COCO interpolates at
    # 101 recall points r = 0, 0.01, ..., 1: 51 of them (r <= 0.5) have precision 0.5.
    gts = [[GroundTruth("circle", [10, 10, 60, 60]), GroundTruth("circle", [100, 40, 180, 120])]]
    preds = [[Detection("circle", 0.9, [0, 100, 30, 140]), Detection("circle", 0.8, [10, 10, 60, 60])]]
    r = coco_evaluate(preds, gts, [SIZE])
    assert r["bbox/AP"] == pytest.approx(51 * 0.5 / 101)
    assert r["bbox/AP50"] == pytest.approx(51 * 0.5 / 101)


def test_iou_thresholds_by_hand():
    # IoU 0.64 passes thresholds 0.50, 0.55, 0.60 of the ten -> AP 0.3, AP50 1, AP75 0.
    gts = [[GroundTruth("square", [0, 0, 100, 100])]]
    preds = [[Detection("square", 0.7, [0, 0, 100, 64])]]
    r = coco_evaluate(preds, gts, [SIZE])
    assert (r["bbox/AP"], r["bbox/AP50"], r["bbox/AP75"]) == pytest.approx((0.3, 1.0, 0.0))
    # A category with no ground truth is left out of the mean (COCO's -1), not counted as 0.
    preds[0].append(Detection("triangle", 0.9, [120, 10, 150, 40]))
    assert coco_evaluate(preds, gts, [SIZE])["bbox/AP"] == pytest.approx(0.3)


def test_mask_ap_uses_mask_overlap_not_boxes():
    gt_mask = _box_mask([20, 20, 120, 120])
    gts = [[GroundTruth("blob", [20, 20, 120, 120], mask=gt_mask)]]
    # Same box, but the predicted mask covers only the top 64% of the object: mask IoU 0.64.
    pred_mask = _box_mask([20, 20, 120, 84])
    preds = [[Detection("blob", 0.9, [20, 20, 120, 120], mask=mask_to_rle(pred_mask))]]
    r = coco_evaluate(preds, gts, [SIZE], iou_types=("bbox", "segm"))
    assert r["bbox/AP"] == pytest.approx(1.0)
    assert (r["segm/AP"], r["segm/AP50"], r["segm/AP75"]) == pytest.approx((0.3, 1.0, 0.0))
    with pytest.raises(ValueError, match="mask on every detection"):
        coco_evaluate([[Detection("blob", 0.9, [20, 20, 120, 120])]], gts, [SIZE], iou_types=("segm",))


def test_keypoint_ap_by_hand():
    names = ["apex", "bottom_left", "bottom_right"]
    gt_kps = {
        "apex": (60.0, 20.0, 2.0),
        "bottom_left": (20.0, 100.0, 2.0),
        "bottom_right": (100.0, 100.0, 2.0),
    }
    area = 80.0 * 80.0
    # Shift every keypoint by d so that OKS = exp(-d^2 / (2 area (2 sigma)^2)) = 0.72 with the
    # default sigma 0.05: thresholds 0.50 .. 0.70 pass (5 of 10) -> AP 0.5.
    sigma = 0.05
    d = math.sqrt(-math.log(0.72) * 2 * area * (2 * sigma) ** 2)
    pred_kps = {n: (x + d, y, 0.9) for n, (x, y, _) in gt_kps.items()}
    gts = [
        [GroundTruth("triangle", [20, 20, 100, 100], mask=_box_mask([20, 20, 100, 100]), keypoints=gt_kps)]
    ]
    preds = [[Detection("triangle", 0.9, [20, 20, 100, 100], keypoints=pred_kps)]]
    r = coco_evaluate(preds, gts, [SIZE], iou_types=("keypoints",))
    assert (r["keypoints/AP"], r["keypoints/AP50"], r["keypoints/AP75"]) == pytest.approx((0.5, 1.0, 0.0))
    exact = [
        [
            Detection(
                "triangle",
                0.9,
                [20, 20, 100, 100],
                keypoints={n: (x, y, 1.0) for n, (x, y, _) in gt_kps.items()},
            )
        ]
    ]
    assert coco_evaluate(exact, gts, [SIZE], iou_types=("keypoints",))["keypoints/AP"] == pytest.approx(1.0)
    # Explicit sigmas change the answer: a 4x wider falloff makes the same shift pass every threshold.
    wide = coco_evaluate(preds, gts, [SIZE], iou_types=("keypoints",), keypoint_names=names, sigmas=[0.2] * 3)
    assert wide["keypoints/AP"] == pytest.approx(1.0)


def test_evaluate_rejects_bad_input():
    with pytest.raises(ValueError, match="one entry per image"):
        coco_evaluate([[]], [[], []], [SIZE])
    with pytest.raises(ValueError, match="unknown iou type"):
        coco_evaluate([[]], [[]], [SIZE], iou_types=("boxes",))


def test_ground_truth_from_targets():
    masks = np.zeros((1, 150, 200), dtype=bool)
    masks[0, 10:20, 30:50] = True
    names = ["circle", "person", "nose", "tail", "sky"]
    families = ["det", "pose", "pose", "pose", "seg"]
    targets = [
        LinkTarget(masks=masks),  # box from the mask
        LinkTarget(
            boxes=np.array([[0, 0, 10, 10]], np.float32),
            keypoints=np.array([[[1, 2, 2], [3, 4, 0]]], np.float32),
        ),
        None,
        None,
        LinkTarget(masks=masks, semantic=True),  # semantic maps are for mIoU, not AP
    ]
    gts = ground_truth_from_targets(names, families, targets)
    assert [g.label for g in gts] == ["circle", "person"]
    assert gts[0].box == [30, 10, 50, 20] and gts[0].mask is not None
    assert gts[1].keypoints == {"nose": (1.0, 2.0, 2.0), "tail": (3.0, 4.0, 0.0)}


def test_rec_accuracy_by_hand():
    gt = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]
    preds = [
        Detection("the dog", 0.9, [0, 0, 10, 10]),  # IoU 1
        [0, 0, 10, 5],  # IoU 0.5 exactly: counts
        [0, 0, 10, 4],  # IoU 0.4: miss
        None,  # nothing predicted: miss
    ]
    assert rec_accuracy(preds, gt) == pytest.approx(0.5)
    assert rec_accuracy(preds, gt, iou_threshold=0.3) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="expressions"):
        rec_accuracy(preds, gt[:2])


def test_referring_segmentation_ciou_and_giou_by_hand():
    gt1 = np.zeros((10, 10), bool)
    gt1[:5] = True  # 50 px
    pred1 = np.zeros((10, 10), bool)
    pred1[:4] = True  # I 40, U 50
    gt2 = np.zeros((10, 10), bool)
    gt2[0, :2] = True  # 2 px
    pred2 = np.zeros((10, 10), bool)
    pred2[9, :2] = True  # I 0, U 4
    r = referring_segmentation_scores([pred1, mask_to_rle(pred2)], [gt1, gt2])
    assert r["cIoU"] == pytest.approx(40 / 54)
    assert r["gIoU"] == pytest.approx((0.8 + 0.0) / 2)
    # None is an empty prediction; empty vs empty scores 1 in gIoU.
    r = referring_segmentation_scores([None, None], [gt1, np.zeros((10, 10), bool)])
    assert r["gIoU"] == pytest.approx(0.5) and r["cIoU"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="shape"):
        referring_segmentation_scores([np.zeros((5, 5), bool)], [gt1])


def test_pose_ranking_oracle_scores_a_skeleton_by_its_best_oks():
    """benchmarks/pose_ranking.py re-scores skeletons by OKS against the best figure of their label."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from pose_ranking import oracle_score

    kps = {"a": (20.0, 20.0, 2.0), "b": (40.0, 30.0, 2.0), "c": (0.0, 0.0, 0.0)}
    far = {k: (x + 50, y + 50, v) for k, (x, y, v) in kps.items()}
    gts = [
        GroundTruth("person", [50, 50, 120, 120], keypoints=far),
        GroundTruth("person", [0, 0, 60, 60], keypoints=kps),
    ]
    exact = Detection(
        "person", 0.1, [0, 0, 60, 60], keypoints={k: (x, y, 1.0) for k, (x, y, _) in kps.items()}
    )
    assert oracle_score(exact, gts) == pytest.approx(1.0)  # the second figure, exactly; "c" is unlabelled
    shifted = Detection(
        "person", 0.9, [0, 0, 60, 60], keypoints={k: (x + 3, y, 1.0) for k, (x, y, _) in kps.items()}
    )
    assert 0.0 < oracle_score(shifted, gts) < 1.0
    assert oracle_score(Detection("dog", 0.9, [0, 0, 60, 60], keypoints=exact.keypoints), gts) == 0.0
