"""Processor: samples -> model batch (ids with ``<image>`` expanded, query slots after every
routing token, labels, pixels, link positions and per-link targets)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN, FamilyConfig
from visionllm2.data.conversation import ConversationTemplate
from visionllm2.data.sample import LinkTarget, Sample
from visionllm2.modeling.region import rasterize_region

IGNORE_INDEX = -100
# A link names the text between the previous separator (or link) and its routing token:
# "circle[DET], red square[DET]" -> "circle", "red square".
_NAME_SEPARATORS = re.compile(r"[,;:\n]|\.\s")


def link_name(text_before: str) -> str:
    """The phrase a routing token names, from the text between it and the previous link."""
    return _NAME_SEPARATORS.split(text_before)[-1].strip()


@dataclass
class PixelSpec:
    """How to turn an image into one pixel input: square side and normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, size, size) normalised float tensor (squash resize)."""
        img = image.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


@dataclass
class Batch:
    """One model batch. T counts every position: text, image slots and query slots."""

    input_ids: torch.Tensor  # (B, T) long; image slots hold <image>, query slots hold pad
    attention_mask: torch.Tensor  # (B, T) long
    labels: torch.Tensor | None  # (B, T) long, IGNORE_INDEX where not trained
    pixel_values: torch.Tensor | None  # (I, 3, H, W) images, ordered by sample
    image_sample: torch.Tensor  # (I,) long: sample of each image
    link_sample: torch.Tensor  # (L,) long
    link_pos: torch.Tensor  # (L,) long: position of the first query slot
    link_family: torch.Tensor  # (L,) long: index into the processor's family list
    link_names: list[str]
    link_targets: list[LinkTarget | None] | None  # (L,) when training a decoder
    region_masks: torch.Tensor | None  # (R, H, W) float at the vision input size
    region_sample: torch.Tensor  # (R,) long
    decoder_pixels: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, 3, s, s)
    image_sizes: torch.Tensor | None = None  # (B, 2) long (w, h) of each sample's first image
    samples: list[Sample] | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        def mv(x: Any, floating: bool = False) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if floating and dtype is not None:
                return x.to(device=device, dtype=dtype)
            return x.to(device)

        return Batch(
            input_ids=mv(self.input_ids),
            attention_mask=mv(self.attention_mask),
            labels=mv(self.labels),
            pixel_values=mv(self.pixel_values, True),
            image_sample=mv(self.image_sample),
            link_sample=mv(self.link_sample),
            link_pos=mv(self.link_pos),
            link_family=mv(self.link_family),
            link_names=self.link_names,
            link_targets=self.link_targets,
            region_masks=mv(self.region_masks, True),
            region_sample=mv(self.region_sample),
            decoder_pixels={k: mv(v, True) for k, v in self.decoder_pixels.items()},
            image_sizes=mv(self.image_sizes),
            samples=self.samples,
        )


class VisionLLM2Processor:
    """Turns :class:`Sample` lists into :class:`Batch` es for training and generation.

    ``<image>`` becomes ``num_image_tokens`` slots (one per visual feature); every routing token
    is followed by its family's K query slots. Query slots are never vocabulary tokens: they
    hold the pad id and the model writes the learned query embeddings there.
    """

    def __init__(
        self,
        *,
        tokenizer: PreTrainedTokenizerBase,
        template: ConversationTemplate,
        image: PixelSpec,
        num_image_tokens: int,
        families: dict[str, FamilyConfig],
        decoder_pixels: dict[str, PixelSpec] | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.image = image
        self.num_image_tokens = num_image_tokens
        self.families = families
        self.family_names = list(families)
        self.decoder_pixels = decoder_pixels or {}
        self.max_length = max_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.region_token_id = tokenizer.convert_tokens_to_ids(REGION_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id
        # routing token id -> family index
        self.routing_ids = {
            tokenizer.convert_tokens_to_ids(f.token): i for i, f in enumerate(families.values())
        }
        self._routing_re = re.compile("|".join(re.escape(f.token) for f in families.values()))

    def num_queries(self, family_index: int) -> int:
        return self.families[self.family_names[family_index]].num_queries

    def name_before(self, text: str) -> str:
        """Name of a routing token that follows ``text`` (only the text after the last link counts)."""
        ends = [m.end() for m in self._routing_re.finditer(text)]
        return link_name(text[ends[-1] :] if ends else text)

    # -- text ------------------------------------------------------------------------------
    def _encode(self, sample: Sample, add_generation_prompt: bool) -> tuple[list[int], list[int], list, int]:
        """ids, labels, links [(position, family, name)], image count of one sample."""
        ids: list[int] = []
        labels: list[int] = []
        links: list[tuple[int, int, str]] = []
        n_images = 0
        for text, trainable in self.template.segments(
            sample.conversation, add_generation_prompt=add_generation_prompt
        ):
            # Names come from the text: the phrase before each routing token in this segment.
            names = [self.name_before(text[: m.start()]) for m in self._routing_re.finditer(text)]
            seg_ids = self.tokenizer.encode(text, add_special_tokens=False)
            for tid in seg_ids:
                if tid == self.image_token_id:
                    ids.extend([tid] * self.num_image_tokens)
                    labels.extend([IGNORE_INDEX] * self.num_image_tokens)
                    n_images += 1
                    continue
                ids.append(tid)
                # The routing token itself is trained (the LM learns to emit it).
                labels.append(tid if trainable and tid != self.region_token_id else IGNORE_INDEX)
                if tid in self.routing_ids:
                    fam = self.routing_ids[tid]
                    links.append((len(ids), fam, names.pop(0)))
                    k = self.num_queries(fam)
                    ids.extend([self.pad_token_id] * k)
                    labels.extend([IGNORE_INDEX] * k)  # queries are never LM targets
        return ids, labels, links, n_images

    # -- batch -----------------------------------------------------------------------------
    def __call__(
        self,
        samples: list[Sample],
        *,
        add_generation_prompt: bool = False,
        padding_side: str | None = None,
        with_targets: bool = True,
    ) -> Batch:
        """Build a batch. Training: full conversations, right padding, labels and targets.
        Generation: ``add_generation_prompt=True`` (left padding by default)."""
        if not samples:
            raise ValueError("the processor needs at least one sample")
        padding_side = padding_side or ("left" if add_generation_prompt else "right")
        encoded = []
        for i, s in enumerate(samples):
            ids, labels, links, n_images = self._encode(s, add_generation_prompt)
            if n_images != len(s.images):
                raise ValueError(
                    f"sample {i} has {n_images} {IMAGE_TOKEN} token(s) but {len(s.images)} image(s); "
                    f"put exactly one {IMAGE_TOKEN} in the text per image"
                )
            n_regions = ids.count(self.region_token_id)
            if n_regions != len(s.regions):
                raise ValueError(
                    f"sample {i} has {n_regions} {REGION_TOKEN} token(s) but {len(s.regions)} region "
                    "prompt(s); give one RegionPrompt per token, in order"
                )
            if s.regions and not s.images:
                raise ValueError(f"sample {i} has region prompts but no image to point into")
            if with_targets and s.targets and len(s.targets) != len(links):
                raise ValueError(
                    f"sample {i} has {len(links)} routing token(s) but {len(s.targets)} link target(s); "
                    "give one target (or None) per routing token, in order"
                )
            if self.max_length is not None and len(ids) > self.max_length:
                raise ValueError(
                    f"sample {i} is {len(ids)} positions long (with image and query slots), over "
                    f"max_length={self.max_length}; shorten the text or raise max_length"
                )
            encoded.append((ids, labels, links))

        B, T = len(samples), max(len(e[0]) for e in encoded)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        label_t = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        link_sample, link_pos, link_family, link_names, link_targets = [], [], [], [], []
        for b, (ids, labels, links) in enumerate(encoded):
            off = T - len(ids) if padding_side == "left" else 0
            input_ids[b, off : off + len(ids)] = torch.tensor(ids)
            attention_mask[b, off : off + len(ids)] = 1
            label_t[b, off : off + len(ids)] = torch.tensor(labels)
            for j, (pos, fam, name) in enumerate(links):
                link_sample.append(b)
                link_pos.append(pos + off)
                link_family.append(fam)
                link_names.append(name)
                link_targets.append(samples[b].targets[j] if samples[b].targets else None)

        images = [img for s in samples for img in s.images]
        image_sample = [b for b, s in enumerate(samples) for _ in s.images]
        regions, region_sample = [], []
        for b, s in enumerate(samples):
            for r in s.regions:
                w, h = s.images[0].size
                regions.append(rasterize_region(r, image_size=(w, h), out_size=self.image.size))
                region_sample.append(b)
        image_sizes = torch.tensor(
            [s.images[0].size if s.images else (0, 0) for s in samples], dtype=torch.long
        )
        decoder_pixels = {}
        for name, spec in self.decoder_pixels.items():
            blank = torch.zeros(3, spec.size, spec.size)
            decoder_pixels[name] = torch.stack([spec(s.images[0]) if s.images else blank for s in samples])
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=None if add_generation_prompt else label_t,
            pixel_values=torch.stack([self.image(im) for im in images]) if images else None,
            image_sample=torch.tensor(image_sample, dtype=torch.long),
            link_sample=torch.tensor(link_sample, dtype=torch.long),
            link_pos=torch.tensor(link_pos, dtype=torch.long),
            link_family=torch.tensor(link_family, dtype=torch.long),
            link_names=link_names,
            link_targets=link_targets if with_targets and any(t is not None for t in link_targets) else None,
            region_masks=torch.stack(regions) if regions else None,
            region_sample=torch.tensor(region_sample, dtype=torch.long),
            decoder_pixels=decoder_pixels,
            image_sizes=image_sizes,
            samples=samples,
        )

    def decode(self, ids: list[int]) -> str:
        """Generated ids -> text, keeping routing tokens but dropping end and pad tokens."""
        drop = {self.tokenizer.eos_token_id, self.pad_token_id}
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)
