"""COCO box, mask and keypoint AP of Detections against ground truth, through pycocotools."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionllm2.data.sample import LinkTarget
from visionllm2.inference.results import Detection
from visionllm2.ops.boxes import masks_to_boxes
from visionllm2.ops.keypoints import keypoint_sigmas
from visionllm2.ops.masks import mask_to_rle

IOU_TYPES = ("bbox", "segm", "keypoints")
_BOX_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_KPT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@dataclass
class GroundTruth:
    """One annotated object of one image: ``box`` xyxy in pixels, ``mask`` (H, W) bool or COCO
    RLE, ``keypoints`` name -> (x, y, v) with COCO visibility (0 unlabelled, 1 hidden, 2 visible)."""

    label: str
    box: Sequence[float]
    mask: np.ndarray | dict[str, Any] | None = None
    keypoints: dict[str, tuple[float, float, float]] | None = None
    iscrowd: bool = False


def ground_truth_from_targets(
    names: Sequence[str], families: Sequence[str], targets: Sequence[LinkTarget | None]
) -> list[GroundTruth]:
    """One sample's per-link targets -> its GroundTruth list, labelled by the links' names.

    Pose class links take the names of the keypoint links that follow them (targets ``None``)
    as keypoint names; semantic ([SEG] class-wide) targets are skipped — score those with mIoU."""
    if not len(names) == len(families) == len(targets):
        raise ValueError(
            f"need one name, family and target per link, got {len(names)}, {len(families)}, {len(targets)}"
        )
    out: list[GroundTruth] = []
    for i, tgt in enumerate(targets):
        if tgt is None or tgt.semantic:
            continue
        masks = None if tgt.masks is None else np.asarray(tgt.masks, dtype=bool)
        if tgt.boxes is not None:
            boxes = np.asarray(tgt.boxes, dtype=np.float32).reshape(-1, 4)
        elif masks is not None:
            boxes = masks_to_boxes(torch.as_tensor(masks)).numpy()
        else:
            continue
        kp_names: list[str] = []
        if tgt.keypoints is not None:
            p = np.asarray(tgt.keypoints).shape[1]
            kp_names = list(names[i + 1 : i + 1 + p])
            if len(kp_names) != p:
                raise ValueError(
                    f"pose link {names[i]!r} has {p} keypoints but only {len(kp_names)} links follow it"
                )
        for j, box in enumerate(boxes):
            kps = None
            if tgt.keypoints is not None:
                kps = {n: tuple(float(v) for v in tgt.keypoints[j][k]) for k, n in enumerate(kp_names)}
            out.append(
                GroundTruth(
                    label=names[i], box=box.tolist(), mask=None if masks is None else masks[j], keypoints=kps
                )
            )
    return out


def _rle_for_coco(mask: np.ndarray | dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE whose counts are bytes, the form every pycocotools version accepts."""
    rle = dict(mask) if isinstance(mask, dict) else mask_to_rle(np.asarray(mask, dtype=bool))
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _flat_keypoints(kps: dict[str, Sequence[float]] | None, order: Sequence[str]) -> list[float]:
    flat: list[float] = []
    for name in order:
        x, y, v = kps.get(name, (0.0, 0.0, 0.0)) if kps else (0.0, 0.0, 0.0)
        flat += [float(x), float(y), float(v)]
    return flat


def coco_evaluate(
    predictions: Sequence[Sequence[Detection]],
    ground_truths: Sequence[Sequence[GroundTruth]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    iou_types: Sequence[str] = ("bbox",),
    keypoint_names: Sequence[str] | None = None,
    sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """COCO AP/AR over a set of images.

    predictions:   per image, the decoder's Detections (label, score, box xyxy, mask RLE,
                   keypoints name -> (x, y, score)); other result items are ignored.
    ground_truths: per image, the GroundTruth objects.
    image_sizes:   per image, (width, height).
    iou_types:     any of "bbox", "segm", "keypoints".
    keypoint_names / sigmas: keypoint order and OKS falloffs; by default the union of the
                   ground truth's keypoint names in first-seen order, with COCO's sigmas for
                   COCO names and a default elsewhere (:func:`keypoint_sigmas`).

    Categories are the labels (strings). Returns ``{"bbox/AP": ..., "segm/AP50": ...,
    "keypoints/AP": ...}`` on a 0-1 scale; -1 where COCO finds the metric undefined (no
    ground truth), 0 when there are no predictions at all.
    """
    if not len(predictions) == len(ground_truths) == len(image_sizes):
        raise ValueError(
            f"need one entry per image: {len(predictions)} predictions, {len(ground_truths)} ground truths, "
            f"{len(image_sizes)} sizes"
        )
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"unknown iou type {t!r}; use {IOU_TYPES}")
    dets = [[d for d in per if isinstance(d, Detection)] for per in predictions]
    labels = sorted({g.label for per in ground_truths for g in per} | {d.label for per in dets for d in per})
    cat_id = {name: i + 1 for i, name in enumerate(labels)}
    if keypoint_names is None:
        seen: dict[str, None] = {}
        for per in ground_truths:
            for g in per:
                seen.update(dict.fromkeys(g.keypoints or {}))
        keypoint_names = list(seen)

    images, annotations = [], []
    for img, ((w, h), per) in enumerate(zip(image_sizes, ground_truths, strict=True), start=1):
        images.append({"id": img, "width": int(w), "height": int(h)})
        for g in per:
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": img,
                "category_id": cat_id[g.label],
                "bbox": _xywh(g.box),
                "iscrowd": int(g.iscrowd),
            }
            if g.mask is not None:
                rle = _rle_for_coco(g.mask)
                ann["segmentation"] = rle
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            if g.keypoints is not None:
                ann["keypoints"] = _flat_keypoints(g.keypoints, keypoint_names)
                ann["num_keypoints"] = sum(1 for v in ann["keypoints"][2::3] if v > 0)
            annotations.append(ann)
    categories = [{"id": i, "name": n, "keypoints": list(keypoint_names)} for n, i in cat_id.items()]

    results: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        for iou_type in iou_types:
            names = _KPT_STATS if iou_type == "keypoints" else _BOX_STATS
            res = _results_for(iou_type, dets, cat_id, keypoint_names)
            if iou_type == "segm" and any("segmentation" not in a for a in annotations):
                raise ValueError("segm AP needs a mask on every ground-truth object")
            if not res:
                results.update({f"{iou_type}/{n}": 0.0 for n in names})
                continue
            ev = COCOeval(gt, gt.loadRes(res), iou_type)
            if iou_type == "keypoints":
                ev.params.kpt_oks_sigmas = (
                    np.asarray(sigmas, dtype=np.float64)
                    if sigmas is not None
                    else keypoint_sigmas(keypoint_names).double().numpy()
                )
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            results.update({f"{iou_type}/{n}": float(v) for n, v in zip(names, ev.stats, strict=True)})
    return results


def _results_for(
    iou_type: str, dets: Sequence[Sequence[Detection]], cat_id: dict[str, int], keypoint_names: Sequence[str]
) -> list[dict[str, Any]]:
    """COCO result records of one iou type; detections lacking what it needs raise."""
    out = []
    for img, per in enumerate(dets, start=1):
        for d in per:
            rec: dict[str, Any] = {"image_id": img, "category_id": cat_id[d.label], "score": float(d.score)}
            if iou_type == "bbox":
                rec["bbox"] = _xywh(d.box)
            elif iou_type == "segm":
                if d.mask is None:
                    raise ValueError(
                        "segm AP needs a mask on every detection; enable the decoder's mask branch"
                    )
                rec["segmentation"] = _rle_for_coco(d.mask)
            else:
                if d.keypoints is None:
                    raise ValueError("keypoint AP needs keypoints on every detection (pose decoder output)")
                rec["keypoints"] = _flat_keypoints(d.keypoints, keypoint_names)
            out.append(rec)
    return out
