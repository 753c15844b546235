"""The paper's central claim, measured: one generalist against single-task specialists.

Each specialist is the same recipe (same architecture, stages, steps, batch size: the same
compute) with the world dataset restricted to one task; the generalist is the recipe as it is
(all tasks mixed). Every model is scored on its task(s) on the world suite's held-out test
split, and the table (markdown + JSON) goes to ``--out``. Runs resume: a specialist whose
``final/`` folder exists is not trained again, and evaluations resume from their part files.

    python benchmarks/specialists.py --config configs/tiny.yaml --tasks vqa pope det grd \
        --generalist src/visionllm2/weights/visionllm2-tiny --limit 50 --out runs/specialists

Extra ``key=value`` arguments override the recipe for every run (e.g. ``stages.0.steps=100``
for a quick look); give the generalist the same ones, or let the script train it
(``--generalist train``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from visionllm2.config import atomic_write_text
from visionllm2.evaluation.runner import evaluate
from visionllm2.evaluation.world import HEADLINE, WorldSuite
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.config import load_train_config
from visionllm2.training.engine import Trainer


def train(config: str, overrides: list[str], out: Path, progress: bool) -> Path:
    if not (out / "final" / "config.json").is_file():
        cfg = load_train_config(config, [*overrides, f"out_dir={out}"])
        Trainer(cfg, resume=True, progress=progress).run()
    return out / "final"


def score(
    model_dir: Path, tasks: list[str], out: Path, limit: int, progress: bool
) -> dict[str, float | None]:
    model = from_pretrained(model_dir)
    suite = WorldSuite(name="world", data=None, limit=limit, tasks=tasks, splits=["test"])
    summary = evaluate(model, suite, out, model_name=str(model_dir), progress=progress)
    scores = summary["scores"]["test"]
    return {t: scores[t].get(HEADLINE[t]) if isinstance(scores[t], dict) else None for t in tasks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the generalist's recipe")
    p.add_argument("--tasks", nargs="+", required=True, choices=sorted(HEADLINE), help="world tasks")
    p.add_argument(
        "--generalist", required=True, help="model folder (or 'tiny'), or 'train' to train it here"
    )
    p.add_argument("--limit", type=int, default=50, help="test items per task (default 50)")
    p.add_argument("--out", default="runs/specialists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides for every run")
    args = p.parse_args(argv)
    out, progress = Path(args.out), not args.no_progress
    if args.generalist == "train":
        generalist = train(args.config, args.overrides, out / "generalist", progress)
    else:
        generalist = args.generalist
    rows = {"generalist": score(generalist, args.tasks, out / "eval-generalist", args.limit, progress)}
    for task in args.tasks:
        # The world dataset is the recipe's first data entry; one task keeps all its weight.
        run = train(
            args.config, [*args.overrides, f"data.0.args.weights={{{task}: 1.0}}"], out / task, progress
        )
        rows[task] = score(run, [task], out / f"eval-{task}", args.limit, progress)
    lines = [
        "| task | metric | specialist | generalist | generalist − specialist |",
        "|---|---|---|---|---|",
    ]
    table = []
    for task in args.tasks:
        spec, gen = rows[task][task], rows["generalist"][task]
        diff = None if spec is None or gen is None else gen - spec
        table.append(
            {"task": task, "metric": HEADLINE[task], "specialist": spec, "generalist": gen, "diff": diff}
        )

        def fmt(v):
            return "n/a" if v is None else f"{v:.1f}"

        lines.append(f"| {task} | {HEADLINE[task]} | {fmt(spec)} | {fmt(gen)} | {fmt(diff)} |")
    atomic_write_text(
        out / "table.json",
        json.dumps(
            {"config": args.config, "overrides": args.overrides, "limit": args.limit, "rows": table}, indent=2
        ),
    )
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
