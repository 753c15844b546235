"""Does the model read the image? LM loss of the answers with each sample's own image against
another sample's image, per text task.

A model that answers from the image has a clearly higher loss with the wrong image; a model
that answers from the text alone (the answer prior) has the same loss either way. The images
are rotated within each task's samples, so every sample gets a real world image of the same
kind, only not its own. Also printed: the size of the LLM's input embeddings at image slots and
at text positions, and of the answers' loss gradient reaching each.

    python benchmarks/image_reliance.py --model tiny --per-task 48 [--one-shape]

``--one-shape`` asks about scenes of one shape with no figures or words (the first stage of
``configs/tiny_curriculum.yaml``), where reading the image is easiest; ``--look`` asks only the
question of the curriculum's ``look`` stage, the colour of one 39-57 px shape (VQA alone).
"""

from __future__ import annotations

import argparse

import torch

from condition_reliance import ONE_SHAPE
from visionllm2.evaluation.reliance import answer_loss_gap, samples_by_task
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset

TASKS = ("vqa", "pope", "mc", "region_recog", "caption")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--per-task", type=int, default=48, help="samples per task")
    p.add_argument("--seed", type=int, default=123, help="world dataset seed (not the training seed 0)")
    p.add_argument("--one-shape", action="store_true", help="scenes of one shape, no figures or words")
    p.add_argument("--look", action="store_true", help="the colour of one 39-57 px shape only")
    args = p.parse_args()
    torch.manual_seed(0)
    model = from_pretrained(args.model).eval()
    if args.look:
        scenes, tasks = {**ONE_SHAPE, "min_size": 0.3, "max_size": 0.45}, ("vqa",)
        options = {"weights": {"vqa": 1.0}, "task_options": {"vqa": {"vqa_type": "colour"}}}
    else:
        scenes, tasks, options = (ONE_SHAPE if args.one_shape else None), TASKS, {}
    data = world_dataset(num=100_000, seed=args.seed, heldout_seed=0, config=scenes, **options)
    by_task = samples_by_task(data, tasks, args.per_task)
    kind = "look (colour of one 39-57 px shape)" if args.look else "one-shape" if args.one_shape else "world"
    print(f"model {args.model}, {args.per_task} samples per task (world seed {args.seed}, {kind} scenes)\n")
    print("| task | LM loss, own image | LM loss, another image | difference |")
    print("|---|---|---|---|")
    for t, samples in by_task.items():
        own, other = answer_loss_gap(model, samples)
        print(f"| {t} | {own:.4f} | {other:.4f} | {other - own:+.4f} |")
    image_norm, text_norm, image_grad, text_grad = token_sizes(model, by_task["vqa"][:16])
    print(
        "\nVQA batch of 16, per token (L2 norm, mean): input embedding "
        f"{image_norm:.3g} at image slots vs {text_norm:.3g} at text; gradient of the answers' LM loss "
        f"{image_grad:.3g} vs {text_grad:.3g}"
    )


def token_sizes(model, samples) -> tuple[float, float, float, float]:
    """Mean L2 norm of the LLM's input embeddings, and of the answers' next-token loss gradient
    with respect to them, at image slots and at (attended) text positions."""
    batch = model.processor(samples)
    image = batch.input_ids == model.processor.image_token_id
    text = ~image & batch.attention_mask.bool()
    embeds = model.embed(batch).detach().requires_grad_(True)
    logits = model.logits(model.run_llm(embeds, batch.attention_mask))
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100
    )
    loss.backward()
    norm, grad = embeds.detach().norm(dim=-1), embeds.grad.norm(dim=-1)
    return (
        float(norm[image].mean()),
        float(norm[text].mean()),
        float(grad[image].mean()),
        float(grad[text].mean()),
    )


if __name__ == "__main__":
    main()
