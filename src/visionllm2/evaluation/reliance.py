"""Does a model's text answer come from the image? The answers' LM loss (teacher forcing) with
each sample's own image against another sample's: a model that reads the image has a clearly
higher loss with the wrong one; a model answering from the question alone (the answer prior)
has the same loss either way. ``benchmarks/image_reliance.py`` prints it per task."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from visionllm2.data.sample import Sample


def samples_by_task(
    data: Iterable[Sample], tasks: Sequence[str], per_task: int, *, one_image: bool = True
) -> dict[str, list[Sample]]:
    """The first ``per_task`` samples of each task in ``data``, in order; with ``one_image``
    only samples of one image (text-to-image samples have none)."""
    picked: dict[str, list[Sample]] = {t: [] for t in tasks}
    for s in data:
        if s.task in picked and len(picked[s.task]) < per_task and (len(s.images) == 1 or not one_image):
            picked[s.task].append(s)
        if all(len(v) == per_task for v in picked.values()):
            return picked
    short = {t: len(v) for t, v in picked.items() if len(v) < per_task}
    raise ValueError(f"the data ran out before {per_task} samples of each task: found only {short}")


def answer_loss_gap(model, samples: Sequence[Sample]) -> tuple[float, float]:
    """Mean answer LM loss per sample with each sample's own image, and with the previous one's
    (images rotated by one, so every answer meets a real image of its task, only not its own)."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples to swap their images, got {len(samples)}")
    batch = model.processor(list(samples))
    with torch.no_grad():
        own = float(model(batch, decoders=False).lm_loss_per_sample.nanmean())
        batch.pixel_values = batch.pixel_values.roll(1, dims=0)
        other = float(model(batch, decoders=False).lm_loss_per_sample.nanmean())
    return own, other
