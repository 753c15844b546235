"""World-verifier accuracy of generation / editing against the number of sampling steps.

For each step count the model's diffusion decoders sample with that many steps, the world
suite's ``gen`` / ``edit`` items (held-out test split) are generated through the LLM's links,
and the verifier scores the images; the time per image is measured alongside.

    python benchmarks/bench_gen_steps.py --model tiny --steps 5 10 25 50 --limit 24
"""

from __future__ import annotations

import argparse
import tempfile
import time

from visionllm2.evaluation.runner import evaluate
from visionllm2.evaluation.world import WorldSuite
from visionllm2.modeling.builder import from_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    p.add_argument("--tasks", nargs="+", default=["gen", "edit"], choices=["gen", "edit"])
    p.add_argument("--limit", type=int, default=24, help="test items per task")
    args = p.parse_args()
    model = from_pretrained(args.model)
    decoders = {t: model.decoders[model.config.families[t].decoder] for t in args.tasks}
    print("| task | steps | verifier accuracy | exact | change rate | s/image |\n|---|---|---|---|---|---|")
    for steps in args.steps:
        for task, dec in decoders.items():
            dec.num_inference_steps = steps
            suite = WorldSuite(limit=args.limit, tasks=[task], splits=["test"])
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                summary = evaluate(model, suite, out, progress=False)
                dt = (time.perf_counter() - t0) / args.limit
            s = summary["scores"]["test"][task]
            acc, exact = s["verifier_accuracy"], s["exact"]
            change = f"{s['change_rate']:.1f}" if task == "edit" else "-"
            print(f"| {task} | {steps} | {acc:.1f} | {exact:.1f} | {change} | {dt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
