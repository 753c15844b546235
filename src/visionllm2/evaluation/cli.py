"""``visionllm2 eval``: run a model over one benchmark and write predictions, submission and summaries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visionllm2.cli import CLIError, add_model_arguments

# Kept in step with visionllm2.evaluation.suites.BENCHMARKS (a test checks it).
BENCHMARK_NAMES = (
    "vqav2", "textvqa", "vizwiz", "gqa", "pope", "scienceqa", "mmbench", "mme",
    "coco_det", "coco_seg", "coco_keypoints", "refcoco", "refcoco+", "refcocog", "ade20k", "world",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on a benchmark (VQAv2, POPE, MME, COCO, RefCOCO, ADE20K, world, ...)",
        description="Run a model over a benchmark laid out as released and write predictions.jsonl, the "
        "benchmark's submission file(s), summary.json and summary.md into --out. Reruns resume: finished "
        "items are skipped. Under torchrun the items are sharded over the processes (same results as one "
        "process). See docs/evaluation.md.",
    )
    add_model_arguments(p)
    # Names are checked when the command runs: importing the registry here would load torch for --help.
    p.add_argument("--benchmark", required=True, metavar="NAME", help=f"one of: {', '.join(BENCHMARK_NAMES)}")
    p.add_argument(
        "--data", help="the benchmark's folder (as released); for world, optional: a `data synth` folder"
    )
    p.add_argument("--limit", type=int, help="evaluate the first N items only (world: N per task and split)")
    p.add_argument("--out", help="output folder (default: eval/<benchmark>)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    p.add_argument("--max-new-tokens", type=int, help="override every item's generation limit")
    p.add_argument(
        "--split", help="benchmark split (e.g. val2014, testdev_balanced, val2017, testA, validation)"
    )
    p.add_argument("--image-root", help="images folder, when not where the release puts it")
    p.add_argument(
        "--links",
        choices=("forced", "generated"),
        help="perception benchmarks: force the answer's link list (default, official protocol) or let "
        "the model write its answer",
    )
    p.add_argument(
        "--no-circular",
        dest="circular",
        action="store_const",
        const=False,
        help="MMBench: ask each question once instead of once per rotation of its options",
    )
    p.add_argument(
        "--seed", type=int, help="world: the training seed (held-out pairs); default 0 or the manifest's"
    )
    p.add_argument("--tasks", help="world: comma-separated subset of tasks")
    p.add_argument("--splits", help="world: comma-separated subset of test,heldout_phrasing,compositional")
    p.add_argument("--overwrite", action="store_true", help="discard predictions of another run in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from visionllm2.evaluation.runner import evaluate
    from visionllm2.evaluation.suites import make_benchmark
    from visionllm2.modeling.builder import from_pretrained, resolve_model_path
    from visionllm2.training.distributed import init_distributed

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    options = {
        "split": args.split,
        "image_root": args.image_root,
        "links": args.links,
        "circular": args.circular,
        "seed": args.seed,
        "tasks": args.tasks,
        "splits": args.splits,
    }
    benchmark = make_benchmark(args.benchmark, data=args.data, limit=args.limit, **options)
    info = init_distributed(args.device)
    try:
        model = from_pretrained(args.model, device=info.device)
        out = Path(args.out) if args.out else Path("eval") / args.benchmark.replace("+", "_plus")
        summary = evaluate(
            model,
            benchmark,
            out,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            # Absolute, so a resumed run from another working directory matches run.json.
            model_name=str(resolve_model_path(args.model).resolve()),
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary is not None:
        print((out / "summary.md").read_text(encoding="utf-8"), end="")
        print(f"wrote {out}/summary.json, {out}/predictions.jsonl", file=sys.stderr)
    return 0
