"""The best verifier accuracy a diffusion decoder of a given resolution can reach on the world.

The exact target of every ``gen`` / ``edit`` item (world suite, test split) is shrunk to each
decoder resolution (bilinear, like a perfect low-resolution drawing) and scored by the world
verifier twice: at that size as is, and upsampled bicubic back to the world's size (what the
world suite does before verifying since the suite scores at the world's resolution).

    python benchmarks/verifier_ceiling.py --sizes 32 48 64 96 128 --limit 60
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from visionllm2.data.synthetic.verifier import find_shapes, match_shapes
from visionllm2.evaluation.world import WorldSuite


def _as_is(case, image: Image.Image) -> float:
    """Verifier accuracy of ``image`` analysed at its own size (centres scaled to it)."""
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
    p.add_argument("--tasks", nargs="+", default=["gen", "edit"], choices=["gen", "edit"])
    p.add_argument("--limit", type=int, default=60, help="test items per task")
    args = p.parse_args()
    suite = WorldSuite(limit=args.limit, tasks=args.tasks, splits=["test"])
    print("| task | decoder px | as is | upsampled to the world's size |\n|---|---|---|---|")
    for task in args.tasks:
        targets = []
        for uid, case in suite._task_cases("test", task):
            if task == "gen":
                targets.append((case, suite.scene("test", int(uid.split("/")[-1]))[1].image.convert("RGB")))
            else:
                targets.append((case, case.ref["target"].convert("RGB")))
        for size in args.sizes:
            as_is, up = [], []
            for case, target in targets:
                small = target.resize((size, size), Image.BILINEAR)
                as_is.append(_as_is(case, small))
                up.append(WorldSuite._verify(case, small)["accuracy"])
            print(f"| {task} | {size} | {100 * np.mean(as_is):.1f} | {100 * np.mean(up):.1f} |", flush=True)


if __name__ == "__main__":
    main()
