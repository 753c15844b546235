"""Semantic segmentation with the whole label set asked, against fewer classes.

The world suite scores semantic segmentation by asking for every category at once (mIoU over the
whole label set). This asks the same scenes three ways and scores each with the suite's mIoU:

- ``all``: every category, as the suite does;
- ``six``: the present classes, then absent ones up to six names (the largest question the world
  data asked before 2026-11-27);
- ``present``: only the classes in the scene. An oracle: it tells the model which classes exist,
  so it is not a score, only how much of the gap to it comes from absent classes.

Then, for ``all``, where each category's pixels went: the confusion matrix as percentages of each
true class's pixels (rows), the last column the pixels left without a class.

    python benchmarks/semantic_label_set.py --model tiny --limit 30 --split test
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from visionllm2.evaluation import world
from visionllm2.evaluation.runner import evaluate
from visionllm2.modeling.builder import from_pretrained

ALL = world.CATEGORIES
MODES = ("all", "six", "present")


class LabelSetSuite(world.WorldSuite):
    """The world suite's semantic items, each asking for the classes that ``mode`` picks."""

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(tasks="sem_seg", **kwargs)
        self.mode = mode

    def semantic_classes(self, k, rendered):
        if self.mode == "all":
            return super().semantic_classes(k, rendered)
        present = [c for i, c in enumerate(ALL) if (rendered.semantic == i + 1).any()]
        absent = [c for c in ALL if c not in present]
        names = present if self.mode == "present" else present + absent[: max(0, 6 - len(present))]
        np.random.default_rng(k).shuffle(names)
        return tuple(names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--limit", type=int, default=30, help="scenes per mode")
    p.add_argument("--split", default="test", choices=world.WORLD_SPLITS)
    args = p.parse_args()
    model = from_pretrained(args.model)
    print(f"model {args.model}, {args.limit} {args.split} scenes\n")
    print("| classes asked | mIoU | mAcc | aAcc |")
    print("|---|---|---|---|")
    cm = None
    for mode in MODES:
        suite = LabelSetSuite(mode, limit=args.limit, splits=args.split)
        with tempfile.TemporaryDirectory() as out:
            summary = evaluate(model, suite, out, progress=False)
            if mode == "all":
                cm = confusion(suite, model, Path(out) / "predictions.jsonl")
        s = summary["scores"][args.split]["sem_seg"]
        print(f"| {mode} | {s['mIoU']:.1f} | {s['mAcc']:.1f} | {s['aAcc']:.1f} |")
    print("\nAsked for all: % of each true class's pixels (rows) given to each class (columns)\n")
    print("| true \\ predicted | " + " | ".join(ALL) + " | none |")
    print("|---" * (len(ALL) + 2) + "|")
    for name, row in zip(ALL, cm):
        pct = 100.0 * row / max(row.sum(), 1)
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in pct) + " |")


def confusion(suite: LabelSetSuite, model, predictions: Path) -> np.ndarray:
    """(C, C+1) pixel counts, true class by predicted class (the last: none), over the suite's items."""
    records = {r["uid"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    return world.semantic_confusion([(it.ref, records[it.uid]) for it in suite.items(model)])[: len(ALL)]


if __name__ == "__main__":
    main()
