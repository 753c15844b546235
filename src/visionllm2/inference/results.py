"""Typed inference results: text plus what each decoder produced (ARCHITECTURE.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Detection:
    """One object: ``box`` xyxy in pixels of the original image, ``mask`` as COCO RLE
    (``{"size": [h, w], "counts": str}``), ``keypoints`` name -> (x, y, score)."""

    label: str
    score: float
    box: list[float]
    mask: dict[str, Any] | None = None
    keypoints: dict[str, tuple[float, float, float]] | None = None
    link: int = -1  # which of the sample's links (in order) named this object's class

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "score": self.score, "box": self.box}
        if self.mask is not None:
            out["mask"] = self.mask
        if self.keypoints is not None:
            out["keypoints"] = {k: list(v) for k, v in self.keypoints.items()}
        return out


@dataclass
class SemanticMap:
    """Per-pixel class indices into ``labels`` at the original image size; -1 where no class."""

    labels: list[str]
    classes: np.ndarray  # (H, W) int32

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "shape": list(self.classes.shape)}


@dataclass
class GeneratedImage:
    """An image produced by a [GEN] or [EDIT] link."""

    image: Image.Image
    family: str

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "size": list(self.image.size)}


@dataclass
class Result:
    """What one sample's inference returns: the generated text and the decoders' items."""

    text: str
    items: list[Any] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)  # family and name of each link
    token_ids: list[int] = field(default_factory=list)  # generated ids, end token included

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "links": self.links,
            "items": [i.to_dict() if hasattr(i, "to_dict") else i for i in self.items],
        }
