"""`visionllm2 train`: run a training recipe (all stages), resumable."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a recipe (configs/*.yaml)",
        description="Run every stage of a training recipe. Extra key=value arguments override the "
        "recipe (stages.0.steps=100, batch_size=16, model.overrides.llm.num_layers=4).",
    )
    p.add_argument("--config", required=True, help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from visionllm2.training.config import load_train_config
    from visionllm2.training.engine import Trainer

    cfg = load_train_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume, num_workers=args.workers, progress=not args.no_progress)
    final = trainer.run()
    if trainer.dist.is_main:
        print(f"done: {cfg.out_dir}/final  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(final.items())))
    return 0
