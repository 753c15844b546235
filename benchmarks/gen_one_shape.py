"""Text-to-image on one-shape scenes: does the image follow the request?

The world suite's text-to-image items with scenes of one shape and no figures or words (the
one-shape config of ``condition_reliance.py``), scored by the verifier and by the colour / colour
and kind / colour in its grid cell recalls, each against the item's own request and against the
next item's: a decoder that ignores its request scores the same on both.

    python benchmarks/gen_one_shape.py --model tiny --limit 48 --steps 25
"""

from __future__ import annotations

import argparse
import tempfile

from condition_reliance import ONE_SHAPE
from visionllm2.data.synthetic.verifier import RECALL_PARTS
from visionllm2.data.synthetic.world import WorldConfig
from visionllm2.evaluation.runner import evaluate
from visionllm2.evaluation.world import WorldSuite
from visionllm2.modeling.builder import from_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["tiny"])
    p.add_argument("--limit", type=int, default=48, help="test scenes")
    p.add_argument("--steps", type=int, nargs="+", default=[25], help="sampling steps")
    args = p.parse_args()
    parts = " | ".join(f"{part} recall: own / other request" for part in RECALL_PARTS)
    print(f"| model | steps | verifier accuracy | {parts} |")
    print("|---|---|---|" + "---|" * len(RECALL_PARTS))
    for name in args.model:
        model = from_pretrained(name).eval()
        decoder = model.decoders[model.config.families["gen"].decoder]
        for steps in args.steps:
            decoder.num_inference_steps = steps
            suite = WorldSuite(limit=args.limit, tasks="gen", splits="test")
            suite.config = WorldConfig(width=suite.config.width, height=suite.config.height, **ONE_SHAPE)
            with tempfile.TemporaryDirectory() as out:
                s = evaluate(model, suite, out, batch_size=16, progress=False)["scores"]["test"]["gen"]
            cells = " | ".join(
                f"{s[f'{part}_recall']:.1f} / {s[f'{part}_recall_other_request']:.1f}"
                for part in RECALL_PARTS
            )
            print(f"| {name} | {steps} | {s['verifier_accuracy']:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
