"""The LM answers from the image: a tiny model learns a question that only the image can answer.

The shipped world model does not (``benchmarks/image_reliance.py``); this checks that the path
itself (vision tower -> projector -> LLM -> answer) carries what the answer needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny
from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation.reliance import answer_loss_gap, samples_by_task
from visionllm2.inference.generate import GenerationConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}
QUESTION = "<image>\nWhat colour is the square?"


def square_question(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One square of a random colour, size and place on white: only the image says which colour."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img = np.full((32, 32, 3), 255, np.uint8)
    side = int(rng.integers(8, 16))
    x, y = (int(v) for v in rng.integers(0, 32 - side, 2))
    img[y : y + side, x : x + side] = COLOURS[colour]
    return Image.fromarray(img), colour


def answered(image: Image.Image, colour: str) -> Sample:
    return Sample([image], [Turn("user", QUESTION), Turn("assistant", colour)], task="vqa")


def test_answers_come_from_the_image(one_thread):
    model = make_tiny(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(200):  # fresh images every step: the answer cannot be memorised per image
        batch = model.processor([answered(*square_question(rng)) for _ in range(16)])
        loss = model(batch, decoders=False).lm_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    test_rng = np.random.default_rng(1)
    held_out = [square_question(test_rng) for _ in range(32)]
    prompts = [Sample([image], [Turn("user", QUESTION)]) for image, _ in held_out]
    results = model.generate(
        model.processor(prompts, add_generation_prompt=True), GenerationConfig(max_new_tokens=10)
    )
    right = sum(r.text.strip() == colour for r, (_, colour) in zip(results, held_out))
    assert right >= 29, [r.text for r in results]

    # The same answers scored with another sample's image (a quarter share the colour): the loss
    # rises; the answer prior alone would leave it unchanged, as it does for the shipped world model.
    own, other = answer_loss_gap(model, [answered(image, colour) for image, colour in held_out])
    assert other > own + 0.5, (own, other)  # measured 0.008 -> 0.94 (the loss per token)


def test_samples_by_task_takes_the_first_of_each_and_says_when_the_data_runs_short():
    image = Image.new("RGB", (8, 8))
    data = [
        Sample([image], [Turn("user", "<image>\nq"), Turn("assistant", str(i))], task=t)
        for i, t in enumerate(["vqa", "mc", "vqa", "caption", "vqa", "mc"])
    ]
    data.insert(1, Sample([image, image], data[0].conversation, task="vqa"))  # two images: skipped
    picked = samples_by_task(data, ["vqa", "mc"], 2)
    assert [s.conversation[1].content for s in picked["vqa"]] == ["0", "2"]
    assert [s.conversation[1].content for s in picked["mc"]] == ["1", "5"]
    with pytest.raises(ValueError, match="only {'mc': 2}"):
        samples_by_task(data, ["vqa", "mc"], 3)
    anyway = samples_by_task(data, ["vqa"], 2, one_image=False)["vqa"]
    assert [len(s.images) for s in anyway] == [1, 2]  # the two-image sample kept
