"""Does the grounding decoder find the referred object and rank it wrong, or miss it? World grounding
items run as in the suite (forced links), with the decoder returning the ``--k`` best queries of each
phrase (``grd_candidates``); per split, the share of items whose referred object (IoU >= 0.5) is the
best query (the suite's Acc@0.5), among the 2, 3, 5 and k best, or among none of them.

    python benchmarks/grounding_topk.py --model tiny --limit 200
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from visionllm2.evaluation.runner import EvalItem, evaluate, read_predictions
from visionllm2.evaluation.world import WorldSuite
from visionllm2.inference.results import Detection, Result
from visionllm2.modeling.model import VisionLLM2Model
from visionllm2.ops.boxes import box_iou

RANKS = (1, 2, 3, 5)


class RankedGrounding(WorldSuite):
    """The world suite's grounding items; each record also keeps the rank of the first candidate
    box on the referred object (-1: none of them)."""

    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        rec = super().record(item, result, out_dir=out_dir)
        boxes = [d.box for d in result.items if isinstance(d, Detection) and d.link == 0]  # best first
        rec["rank"] = -1
        if boxes:
            gt = torch.tensor([item.ref.ref["box"]], dtype=torch.float64)
            iou = box_iou(torch.tensor(boxes, dtype=torch.float64), gt)[0][:, 0]
            hits = (iou >= 0.5).nonzero().flatten()
            rec["rank"] = int(hits[0]) if len(hits) else -1
        return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--limit", type=int, default=200, help="items per split")
    ap.add_argument("--k", type=int, default=10, help="candidate boxes per phrase")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if args.k < max(RANKS):
        ap.error(f"--k must be at least {max(RANKS)}")

    model = VisionLLM2Model.from_pretrained(args.model)
    model.decoders[model.config.families["grd"].decoder].grd_candidates = args.k
    suite = RankedGrounding(limit=args.limit, tasks="grd")
    with tempfile.TemporaryDirectory() as out:
        evaluate(model, suite, out, batch_size=args.batch_size, model_name=args.model, progress=False)
        records = read_predictions(Path(out))
    ranks: dict[str, list[int]] = defaultdict(list)
    for uid, rec in records.items():
        ranks[uid.split("/")[0]].append(rec["rank"])

    print(
        f"model {args.model}, {args.limit} grounding items per split, the {args.k} best queries per phrase\n"
    )
    cols = [f"top-{r}" for r in RANKS] + [f"top-{args.k}", "none"]
    print("| split | items | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for split, rs in ranks.items():
        n = len(rs)
        shares = [sum(0 <= r < k for r in rs) / n for k in (*RANKS, args.k)] + [sum(r < 0 for r in rs) / n]
        print(f"| {split} | {n} | " + " | ".join(f"{100 * v:.1f}" for v in shares) + " |")


if __name__ == "__main__":
    main()
