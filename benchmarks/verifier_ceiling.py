"""What the world verifier gives a perfect drawing at each decoder resolution, and a do-nothing edit.

The exact target of every ``gen`` / ``edit`` item (world suite, test split) is shrunk to each
decoder resolution (bicubic, as the decoder shrinks its training targets: a perfect drawing at
that size). First table: the shapes the verifier recovers from it analysed at that size as is,
and upsampled bicubic to the world's size (what the world suite scores). Second table: the world
suite's edit scores for those images and for the source image returned unchanged.

    python benchmarks/verifier_ceiling.py --sizes 32 48 64 96 128 --limit 60
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from visionllm2.data.synthetic.verifier import find_shapes, match_shapes
from visionllm2.evaluation.world import WorldSuite
from visionllm2.inference.results import GeneratedImage, Result
from visionllm2.modeling.builder import from_pretrained


def _as_is(case, image: Image.Image) -> float:
    """Shape accuracy of ``image`` analysed at its own size (the expected centres scaled to it)."""
    w, h = image.size
    sw, sh = case.ref["size"]
    expected = [
        {**e, "centre": (e["centre"][0] * w / sw, e["centre"][1] * h / sh)} for e in case.ref["expected"]
    ]
    tolerance = 10.0 if case.task == "gen" else 0.1
    found = find_shapes(image, denoise=True)
    return match_shapes(found, expected, width=w, height=h, tolerance=tolerance)["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    p.add_argument("--limit", type=int, default=60, help="test items per task")
    args = p.parse_args()
    suite = WorldSuite(limit=args.limit, tasks=["gen", "edit"], splits=["test"])
    all_items = suite.items(from_pretrained("tiny"))  # any model with gen and edit decoders: none runs
    items = {task: [it for it in all_items if it.ref.task == task] for task in ("gen", "edit")}

    def target(item) -> Image.Image:
        if item.ref.task == "edit":
            return item.ref.ref["target"].convert("RGB")
        return suite.scene("test", int(item.uid.split("/")[-1]))[1].image.convert("RGB")

    def suite_scores(pairs, out: str) -> dict:
        records = {
            it.uid: suite.record(it, Result(text="", items=[GeneratedImage(im, "edit")]), out_dir=Path(out))
            for it, im in pairs
        }
        return suite.score([it for it, _ in pairs], records)["test"]["edit"]

    print("| task | decoder px | shapes found, as is | upsampled to the world's size |\n|---|---|---|---|")
    for task in ("gen", "edit"):
        for size in args.sizes:
            as_is, up = [], []
            for it in items[task]:
                small = target(it).resize((size, size), Image.BICUBIC)
                as_is.append(_as_is(it.ref, small))
                up.append(WorldSuite._verify(it.ref, small)["accuracy"])
            print(f"| {task} | {size} | {100 * np.mean(as_is):.1f} | {100 * np.mean(up):.1f} |", flush=True)

    print(
        "\n| edit output | verifier accuracy | change rate | shape accuracy | outside error |\n"
        "|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as out:
        rows = [(f"exact target at {size} px", size) for size in args.sizes] + [("source unchanged", None)]
        for name, size in rows:
            pairs = [
                (it, target(it).resize((size, size), Image.BICUBIC) if size else it.sample().images[0])
                for it in items["edit"]
            ]
            s = suite_scores(pairs, out)
            print(
                f"| {name} | {s['verifier_accuracy']:.1f} | {s['change_rate']:.1f} | "
                f"{s['shape_accuracy']:.1f} | {s['outside_error']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
