"""Decoder interface and registry: one file plus one registry line adds a decoder family."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# name -> "module:Class". Imported lazily so that, say, diffusers is only imported when a
# model actually has a diffusion decoder.
_REGISTRY: dict[str, str] = {}


def register_decoder(name: str, target: str | type[LinkDecoder]) -> None:
    """Register a decoder class (or its "module:Class" path) under ``name``."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _REGISTRY[name] = target


def decoder_class(name: str) -> type[LinkDecoder]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown decoder type {name!r}; registered: {sorted(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def available_decoders() -> list[str]:
    return sorted(_REGISTRY)


@dataclass
class Links:
    """The super links routed to one decoder.

    ``states`` are the LLM's last-layer hidden states at each link's K query positions after
    the decoder's projection; ``embeds`` is their mean, the one embedding per link that
    class-style decoders use (ARCHITECTURE.md §2).
    """

    states: torch.Tensor  # (L, K, D)
    sample: torch.Tensor  # (L,) long: row of the decoder's ``pixels`` (0..S-1)
    batch_index: torch.Tensor  # (L,) long: sample index in the whole batch
    families: list[str]  # (L,) "det", "seg", "grd", "pose", "gen", "edit", ...
    names: list[str]  # (L,) the text each link names ("circle" in "circle[DET]")
    num_samples: int = 0  # S, number of samples in this sub-batch
    # (S, 2) long (width, height) of each sample's original first image, so decoders can
    # normalise pixel-space targets and map predictions back; absent for image-less samples.
    image_sizes: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def embeds(self) -> torch.Tensor:
        """(L, D) mean over the K query states."""
        return self.states.mean(dim=1)

    def __len__(self) -> int:
        return self.states.shape[0]

    def of_sample(self, s: int) -> list[int]:
        """Indices of the links that belong to sub-batch row ``s``, in order."""
        return (self.sample == s).nonzero().flatten().tolist()


class LinkDecoder(nn.Module):
    """Base class of task decoders driven by super links.

    Subclasses set ``families`` (the routing families they serve), ``pixel_size`` (side of
    the square pixel input they want, or ``None`` if they take none) with ``pixel_mean`` /
    ``pixel_std``, and implement ``forward``:

    ``forward(links, pixels, targets=None)``
        links:   :class:`Links` with L links over S samples.
        pixels:  (S, 3, H, W) the decoder's own pixel input for those samples, or ``None``.
        targets: ``None`` for prediction, else a list of L per-link targets
                 (:class:`visionllm2.data.sample.LinkTarget` or ``None``).
        returns: with targets, a dict of named, already weighted scalar losses (summed into
                 the total loss by the model); without, a list of S per-sample raw outputs.

    ``postprocess(output, *, names, families, image_size)`` turns one sample's raw output into
    user results (:mod:`visionllm2.inference.results`): boxes in pixels of the original image
    (xyxy), masks as COCO RLE, keypoints by name, images as PIL.
    """

    families: tuple[str, ...] = ()
    pixel_size: int | None = None
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __init__(self, *, link_dim: int) -> None:
        super().__init__()
        self.link_dim = link_dim

    def postprocess(
        self, output: Any, *, names: list[str], families: list[str], image_size: tuple[int, int] | None
    ) -> list[Any]:
        """One sample's raw ``output`` -> list of result items. ``names``/``families`` are that
        sample's links (in order) for this decoder; ``image_size`` is (width, height)."""
        raise NotImplementedError(f"{type(self).__name__} does not define postprocess()")


# Built-in families: one line each.
register_decoder("diffusion", "visionllm2.decoders.diffusion:DiffusionDecoder")
register_decoder("grounding", "visionllm2.decoders.grounding:GroundingDecoder")
register_decoder("pose", "visionllm2.decoders.pose:PoseDecoder")
