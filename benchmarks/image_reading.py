"""Does a freshly built default-size model learn to read world images? A stage-1-style run on
one kind of question (the colour, or the kind, of the only shape in a world scene), then the
answers' LM loss with each scene's own image against another scene's: a gap above 0 means the
answers come from the image. Also each held-out answer scored against the same answer with every
other colour (or kind) in its place: % of items whose true answer has the lowest loss (chance 1/8
for colours, 1/7 for kinds).

The knobs are what decides it on these runs (README, "Reading the image"): the shapes' size
against the vision tower's patch, and a curriculum that starts from large shapes.

    python benchmarks/image_reading.py                                  # 16-38 px shapes, patch 16
    python benchmarks/image_reading.py --min-size 0.3 --max-size 0.45   # 39-57 px shapes
    python benchmarks/image_reading.py --patch 8
    python benchmarks/image_reading.py --big-first 250 --steps 650      # curriculum
    python benchmarks/image_reading.py --question shape --branch copy   # kinds, with a CNN branch
                                                                        # started from tiny's grounding CNN
    python benchmarks/image_reading.py --model tiny --question shape    # score a saved model only
    python benchmarks/image_reading.py --init tiny --question shape --branch copy --branch-only
                                                                        # train the shipped model
    python benchmarks/image_reading.py --question shape --readout head  # no LLM: a head on its tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

import numpy as np
import torch

from visionllm2.data.processor import IGNORE_INDEX
from visionllm2.data.sample import Turn
from visionllm2.data.synthetic.tasks import TaskNotApplicable, build_task
from visionllm2.data.synthetic.world import COLOURS, KINDS, WorldConfig, generate_scene, render
from visionllm2.modeling.builder import adapt_pretrained, build_model, from_pretrained
from visionllm2.training.config import load_model_config, load_train_config

BIG = {"min_size": 0.3, "max_size": 0.45}


BRANCH = [32, 64, 96]  # the grounding CNN's first three stages: stride 16, the tower's patch
VALUES = {"colour": tuple(COLOURS), "shape": KINDS}


def question(seed: int, config: WorldConfig, kind: str, word: bool = False):
    """A world question of VQA type ``kind`` about the scene's only shape (the next seed if none
    applies); with ``word`` its answer is the bare value, one word."""
    while True:
        scene = generate_scene(seed, config)
        try:
            rng = np.random.default_rng(seed)
            sample = build_task("vqa", scene, rng, rendered=render(scene), config=config, vqa_type=kind)
        except TaskNotApplicable:
            seed += 7919
            continue
        if not word:
            return sample
        *turns, last = sample.conversation
        return dataclasses.replace(sample, conversation=[*turns, Turn(last.role, sample.meta["answer"])])


def with_answer(sample, value: str, truth: str):
    """``sample`` with ``value`` written in its answer in place of ``truth``."""
    *turns, last = sample.conversation
    answer = re.sub(rf"\b{truth}\b", value, last.content)
    return dataclasses.replace(sample, conversation=[*turns, Turn(last.role, answer)])


def choice_accuracy(model, samples, kind: str) -> float:
    """% of samples whose true answer has a lower LM loss than the same answer with any other value."""
    values = VALUES[kind]
    losses = torch.empty(len(samples), len(values))
    with torch.no_grad():
        for i, sample in enumerate(samples):
            truth = sample.meta["answer"]
            batch = model.processor([with_answer(sample, v, truth) for v in values])
            tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(1)  # the values differ in length
            losses[i] = model(batch, decoders=False).lm_loss_per_sample * tokens
    truths = torch.tensor([values.index(s.meta["answer"]) for s in samples])
    return 100 * float((losses.argmin(1) == truths).float().mean())


def start_branch(model, how: str, init: str) -> None:
    """Start the tower's CNN branch from tiny's grounding CNN (``copy``) or as built (``scratch``),
    and its projection at zero (as built) or at a plain linear layer's initialisation."""
    if how == "copy":
        source = from_pretrained("tiny").decoders["grounding"].backbone.state_dict()
        own = model.vision.cnn.state_dict()
        model.vision.cnn.load_state_dict({k: source[k] for k in own})
    if init == "default":
        model.vision.cnn_proj.reset_parameters()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="configs/tiny.yaml", help="the model comes from this recipe")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-size", type=float, default=WorldConfig.min_size)
    p.add_argument("--max-size", type=float, default=WorldConfig.max_size)
    p.add_argument("--patch", type=int, default=None, help="vision patch size (default: the recipe's)")
    p.add_argument("--big-first", type=int, default=0, help="first N steps on 39-57 px shapes")
    p.add_argument("--test", type=int, default=32, help="held-out questions")
    p.add_argument("--eval-every", type=int, default=0, help="score the held-out items every N steps")
    p.add_argument("--question", choices=sorted(VALUES), default="colour", help="VQA type asked")
    p.add_argument(
        "--branch",
        choices=["none", "copy", "scratch"],
        default="none",
        help=f"a CNN branch {BRANCH} beside the tower: from tiny's grounding CNN, or from scratch",
    )
    p.add_argument(
        "--branch-init", choices=["zero", "default"], default="zero", help="the branch projection's start"
    )
    p.add_argument("--freeze-branch", action="store_true", help="train the branch's projection, not its CNN")
    p.add_argument("--branch-only", action="store_true", help="the cells alone, no ViT (cnn_branch_only)")
    p.add_argument("--vision-lr-mult", type=float, default=1.0, help="the ViT's rate as a multiple of --lr")
    p.add_argument(
        "--answer", choices=["sentence", "word"], default="sentence", help="the world's, or the bare value"
    )
    p.add_argument("--model", help="only score this saved model (name or folder) on the held-out items")
    p.add_argument("--init", help="train this saved model (name or folder) instead of a fresh --recipe one")
    p.add_argument(
        "--readout",
        choices=["llm", "head"],
        default="llm",
        help="train the LLM on the answers, or an attention-pooling linear head on the visual tokens",
    )
    args = p.parse_args()
    if args.init and args.patch is not None:
        p.error("--patch changes the tower, which --init loads as saved: drop one of them")
    if args.branch_only and args.branch == "none":
        p.error("--branch-only keeps the cells alone and needs a CNN branch: add --branch copy|scratch")
    if args.model and args.readout == "head":
        p.error("--model scores a saved model's LLM answers; --readout head trains a head on a fresh model")
    word = args.answer == "word"

    one = {"min_shapes": 1, "max_shapes": 1, "p_person": 0.0, "p_dog": 0.0, "p_word": 0.0}
    world = WorldConfig(**one, min_size=args.min_size, max_size=args.max_size)
    big = WorldConfig(**one, **BIG)
    if args.model:
        test = [question(10**7 + i, world, args.question, word) for i in range(args.test)]
        what = f"{args.question} questions, shapes {world.min_px}-{world.max_px} px, {args.answer} answers"
        print(f"{args.model}, {what}: {report(*score(from_pretrained(args.model), test, args.question))}")
        return
    spec = load_train_config(args.recipe).model
    if args.patch is not None:
        spec.overrides["vision.patch_size"] = args.patch
    overrides = {}
    if args.branch != "none":
        overrides = {"vision.cnn_branch": BRANCH, "vision.cnn_branch_only": args.branch_only}
    torch.manual_seed(0)
    if args.init:
        new = ["vision.cnn", "vision.cnn_proj"] if overrides else []
        model = adapt_pretrained(args.init, overrides=overrides, reinit=new).train()
    else:
        spec.overrides.update(overrides)
        model = build_model(load_model_config(spec)).train()
    if args.branch != "none":
        start_branch(model, args.branch, args.branch_init)
        model.vision.cnn.requires_grad_(not args.freeze_branch)
    values = VALUES[args.question]
    head = Readout(model.projector.fc2.out_features, len(values)) if args.readout == "head" else None
    tower = {id(q) for q in model.vision.model.parameters()}
    if head is None:
        trained = [q for q in model.parameters() if q.requires_grad]
    else:  # the visual path and the head; the LLM is not used
        path = [*model.vision.parameters(), *model.projector.parameters()]
        trained = [q for q in path if q.requires_grad] + list(head.parameters())
    groups = [
        {"params": [q for q in trained if id(q) not in tower]},
        {"params": [q for q in trained if id(q) in tower], "lr": args.lr * args.vision_lr_mult},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    test = [question(10**7 + i, world, args.question, word) for i in range(args.test)]
    branch = "" if args.branch == "none" else f", branch {args.branch} ({args.branch_init} projection)"
    branch += ", the cells alone" if args.branch_only else ""
    print(
        f"{args.question} questions, shapes {world.min_px}-{world.max_px} px, patch "
        f"{model.vision.model.config.patch_size}{branch}, {args.big_first} big-shape steps, ViT rate "
        f"x{args.vision_lr_mult}, " + (f"{args.answer} answers" if head is None else "a readout head, no LLM")
    )
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        config = big if step <= args.big_first else world
        seeds = range((step - 1) * args.batch, step * args.batch)
        samples = [question(s, config, args.question, word) for s in seeds]
        if head is None:
            loss = model(model.processor(samples), decoders=False).lm_loss
        else:
            truths = torch.tensor([values.index(s.meta["answer"]) for s in samples])
            loss = torch.nn.functional.cross_entropy(head(visual_tokens(model, samples)), truths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            if head is None:
                scores = report(*score(model, test, args.question))
            else:
                scores = f"readout right {head_accuracy(model, head, test, values):.1f}%"
            print(f"  step {step}: {scores} ({time.perf_counter() - start:.0f} s)", flush=True)
            model.train()


class Readout(torch.nn.Module):
    """A learnt query pools the LLM's visual tokens (each RMS-normalised, as the LLM's first norm
    does) and a linear layer names the value: what the same tokens give without an LLM."""

    def __init__(self, dim: int, values: int):
        super().__init__()
        self.norm = torch.nn.RMSNorm(dim)
        self.query = torch.nn.Parameter(torch.randn(dim) * 0.02)
        self.out = torch.nn.Linear(dim, values)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (I, N, D) -> logits (I, values)."""
        v = self.norm(tokens)
        weights = torch.softmax(v @ self.query / v.shape[-1] ** 0.5, dim=1)
        return self.out((weights.unsqueeze(-1) * v).sum(1))


def visual_tokens(model, samples) -> torch.Tensor:
    """The projected visual tokens the LLM gets for the samples' images, (I, N, D)."""
    return model.projector(model.vision(model.processor(samples).pixel_values))


def head_accuracy(model, head: Readout, test, values) -> float:
    model.eval()
    with torch.no_grad():
        chosen = head(visual_tokens(model, test)).argmax(1)
    truths = torch.tensor([values.index(s.meta["answer"]) for s in test])
    return 100 * float((chosen == truths).float().mean())


def report(own: float, other: float, right: float) -> str:
    return (
        f"LM loss own image {own:.3f}, another image {other:.3f}, gap {other - own:+.3f}; "
        f"answer chosen right {right:.1f}%"
    )


def score(model, test, kind: str) -> tuple[float, float, float]:
    """The held-out answers' LM loss with their own images and with the next item's, and
    :func:`choice_accuracy`."""
    model.eval()
    batch = model.processor(test)
    with torch.no_grad():
        own = float(model(batch, decoders=False).lm_loss)
        batch.pixel_values = batch.pixel_values.roll(1, dims=0)
        other = float(model(batch, decoders=False).lm_loss)
    return own, other, choice_accuracy(model, test, kind)


if __name__ == "__main__":
    main()
