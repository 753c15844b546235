"""Is a model's keypoint AP limited by how it ranks its skeletons? From the predictions of a world
pose evaluation (`visionllm2 eval --benchmark world --tasks pose --out DIR`), keypoint AP and AP50
three ways: as predicted; keeping each image's top-scored skeleton per category; and with every
skeleton's score replaced by its OKS against the best same-category figure (an oracle ranking:
the AP the same skeletons would reach if the scores ordered them by quality). Also the mean OKS
of the top-scored skeleton and of the best one, per (image, category).

    visionllm2 eval --model tiny --benchmark world --tasks pose --limit 200 --out /tmp/ev_pose
    python benchmarks/pose_ranking.py /tmp/ev_pose --limit 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionllm2.evaluation.detection import GroundTruth, coco_evaluate
from visionllm2.evaluation.suites import detection_from_record
from visionllm2.evaluation.world import POSE_KEYPOINT_NAMES, WORLD_SPLITS, WorldSuite
from visionllm2.inference.results import Detection
from visionllm2.ops.keypoints import keypoint_oks, keypoint_sigmas


def oracle_score(d: Detection, gts: list[GroundTruth]) -> float:
    """OKS of a detection's skeleton against the best ground truth of its category (0 if none)."""
    same = [g for g in gts if g.label == d.label and g.keypoints]
    if not same:
        return 0.0
    names = list(same[0].keypoints)
    pred = torch.tensor([[d.keypoints[n][:2] for n in names]], dtype=torch.float32)
    gt = torch.tensor([[g.keypoints[n] for n in names] for g in same], dtype=torch.float32)
    areas = torch.tensor([(g.box[2] - g.box[0]) * (g.box[3] - g.box[1]) for g in same], dtype=torch.float32)
    return float(keypoint_oks(pred, gt, areas, keypoint_sigmas(names)).max())


def keypoint_ap(preds: list[list[Detection]], gts: list[list[GroundTruth]], sizes: list) -> str:
    r = coco_evaluate(preds, gts, sizes, iou_types=("keypoints",), keypoint_names=POSE_KEYPOINT_NAMES)
    return f"{100 * r['keypoints/AP']:.1f} / {100 * r['keypoints/AP50']:.1f}"


def world_task_records(doc: str, task: str) -> list[tuple[str, list[tuple[dict[str, Any], Any]]]]:
    """From the command line (an evaluation's --out folder, its --limit and --splits): per split of a
    world evaluation, the task's (prediction record, suite case) pairs in suite order."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path, help=f"the --out folder of a world evaluation with the {task} task")
    p.add_argument("--limit", type=int, required=True, help="the --limit the evaluation ran with")
    p.add_argument("--splits", default=",".join(WORLD_SPLITS))
    args = p.parse_args()
    path = args.eval_dir / "predictions.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass the --out folder of `visionllm2 eval --benchmark world`")
    records = {r["uid"]: r for r in map(json.loads, path.read_text().splitlines())}
    suite = WorldSuite(limit=args.limit, tasks=task, splits=args.splits)
    out = []
    for split in suite.splits:
        pairs = []
        for uid, case in suite._task_cases(split, task):
            if uid not in records:
                raise SystemExit(f"{uid} is not in {path}: pass the --limit and --splits of that evaluation")
            pairs.append((records[uid], case))
        out.append((split, pairs))
    return out


def main() -> None:
    splits = world_task_records(__doc__, "pose")
    print("| split | AP / AP50 as predicted | top-1 per category | oracle ranking | OKS: top-scored / best |")
    print("|---|---|---|---|---|")
    for split, pairs in splits:
        preds = [[detection_from_record(d) for d in rec["detections"]] for rec, _ in pairs]
        gts = [case.ref["gt"] for _, case in pairs]
        sizes = [case.ref["size"] for _, case in pairs]

        top1, oracle, top_oks, best_oks = [], [], [], []
        for dets, g in zip(preds, gts, strict=True):
            scored = [dataclasses.replace(d, score=oracle_score(d, g)) for d in dets]
            oracle.append(scored)
            kept = []
            for label in dict.fromkeys(d.label for d in dets):
                mine = [i for i, d in enumerate(dets) if d.label == label]
                top = max(mine, key=lambda i: dets[i].score)
                kept.append(dets[top])
                top_oks.append(scored[top].score)
                best_oks.append(max(scored[i].score for i in mine))
            top1.append(kept)
        aps = [keypoint_ap(x, gts, sizes) for x in (preds, top1, oracle)]
        print(
            f"| {split} | {aps[0]} | {aps[1]} | {aps[2]} | {np.mean(top_oks):.3f} / {np.mean(best_oks):.3f} |"
        )


if __name__ == "__main__":
    main()
