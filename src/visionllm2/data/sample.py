"""The canonical sample every dataset format is read into (ARCHITECTURE.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

Role = Literal["system", "user", "assistant"]
RegionKind = Literal["point", "box", "scribble", "mask"]


@dataclass
class Turn:
    """One message of a conversation. ``<image>`` and ``<region>`` mark where images and
    visual prompts go; routing tokens (``[DET]`` …) mark super links."""

    role: Role
    content: str


@dataclass
class LinkTarget:
    """Ground truth for one super link, in pixels of the sample's first image.

    Which fields are set depends on the family: det/seg/grd links carry ``boxes`` (n, 4) xyxy
    and optionally ``masks`` (n, H, W) bool for the instances the link names (n may be 0 for
    an absent class); a pose class link carries ``boxes`` and ``keypoints`` (n, P, 3) with
    (x, y, visibility) in the order of the keypoint-name links that follow it, and the
    keypoint-name links themselves carry ``None``; gen/edit links carry ``image``.
    """

    boxes: np.ndarray | None = None  # (n, 4) float32 xyxy, pixels
    masks: np.ndarray | None = None  # (n, H, W) bool
    keypoints: np.ndarray | None = None  # (n, P, 3) float32 x, y, v (v: 0 absent, 1 hidden, 2 visible)
    image: Image.Image | None = None  # target image of a [GEN] / [EDIT] link
    semantic: bool = False  # masks is one class-wide map ([SEG] semantic), not instances


@dataclass
class RegionPrompt:
    """A visual prompt that replaces one ``<region>`` token. ``data`` is (x, y) for a point,
    (x0, y0, x1, y1) for a box, an (n, 2) polyline for a scribble, or an (H, W) bool mask —
    all in pixels of the sample's first image."""

    kind: RegionKind
    data: Any


@dataclass
class Sample:
    """One training or evaluation example, whatever file it came from.

    ``targets`` has one entry (or ``None``) per routing token in the conversation, in order of
    appearance; ``regions`` has one entry per ``<region>`` token, in order.
    """

    images: list[Image.Image]
    conversation: list[Turn]
    targets: list[LinkTarget | None] = field(default_factory=list)
    regions: list[RegionPrompt] = field(default_factory=list)
    task: str = "chat"
    meta: dict[str, Any] = field(default_factory=dict)
