"""Draw boxes, masks, keypoint skeletons, region prompts and labels on a PIL image (CLI and demo)."""

from __future__ import annotations

import colorsys
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from visionllm2.config import ROUTING_TOKENS
from visionllm2.data.processor import link_name
from visionllm2.data.sample import RegionPrompt, Sample
from visionllm2.data.synthetic.world import FIGURES
from visionllm2.inference.results import Detection, Result, SemanticMap
from visionllm2.ops.masks import rle_to_mask

# Skeletons by keypoint name (COCO person, AP-10K quadruped) for results that carry names only.
NAMED_SKELETONS: dict[str, list[tuple[str, str]]] = {
    cat: [(names[a], names[b]) for a, b in skeleton] for cat, (names, skeleton) in FIGURES.items()
}
_ROUTING_RE = re.compile("|".join(re.escape(t) for t in ROUTING_TOKENS.values()))


def label_colour(label: str) -> tuple[int, int, int]:
    """A bright colour that depends only on the label (same label, same colour, every run)."""
    h = (zlib.crc32(label.encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_annotations(
    image: Image.Image,
    *,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    masks: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """A copy of ``image`` with n objects drawn: ``boxes`` (n, 4) xyxy pixels, ``masks``
    (n, H, W) bool, ``keypoints`` (n, P, 3) x, y, v (v = 0 not drawn, 1 hollow, 2 filled) joined
    by ``skeleton`` (0-based pairs), and ``labels`` / ``scores`` next to each box."""
    out = image.convert("RGB").copy()
    given = [x for x in (boxes, labels, masks, keypoints) if x is not None]
    n = len(given[0]) if given else 0
    for name, x in (
        ("boxes", boxes),
        ("labels", labels),
        ("masks", masks),
        ("keypoints", keypoints),
        ("scores", scores),
    ):
        if x is not None and len(x) != n:
            raise ValueError(f"{name} has {len(x)} entries but other inputs have {n}; give one per object")
    labels = list(labels) if labels is not None else [""] * n
    colours = [label_colour(lab or str(i)) for i, lab in enumerate(labels)]
    if masks is not None and n:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape[1:] != (out.height, out.width):
            raise ValueError(f"masks are {masks.shape[1:]} (H, W) but the image is {(out.height, out.width)}")
        arr = np.asarray(out, dtype=np.float32)
        for m, c in zip(masks, colours, strict=True):
            arr[m] = (1 - alpha) * arr[m] + alpha * np.asarray(c, np.float32)
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    width = max(1, side // 160)
    font = _font(max(8, side // 24))
    if boxes is not None:
        for b, c in zip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), colours, strict=True):
            draw.rectangle(
                [float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1], outline=c, width=width
            )
    if keypoints is not None and n:
        kps = np.asarray(keypoints, dtype=np.float32)
        r = max(1.5, side / 120)
        for k, c in zip(kps, colours, strict=True):
            for a, bi in skeleton or ():
                if k[a, 2] > 0 and k[bi, 2] > 0:
                    draw.line([(k[a, 0], k[a, 1]), (k[bi, 0], k[bi, 1])], fill=c, width=width)
            for x, y, v in k:
                if v > 0:
                    draw.ellipse([x - r, y - r, x + r, y + r], outline=c, fill=c if v >= 2 else None)
    if boxes is not None:
        for i, (b, c) in enumerate(
            zip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), colours, strict=True)
        ):
            text = labels[i] + (f" {scores[i]:.2f}" if scores is not None else "")
            if not text:
                continue
            x0, y0 = float(b[0]), float(b[1])
            tb = draw.textbbox((x0, y0), text, font=font)
            h = tb[3] - tb[1]
            y = y0 - h - 2 if y0 - h - 2 >= 0 else y0
            tb = draw.textbbox((x0, y), text, font=font)
            draw.rectangle([tb[0] - 1, tb[1] - 1, tb[2] + 1, tb[3] + 1], fill=c)
            draw.text((x0, y), text, fill=(0, 0, 0), font=font)
    return out


def draw_region(
    image: Image.Image, region: RegionPrompt, *, colour: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """A copy of ``image`` with a visual prompt (point, box, scribble or mask) drawn on it."""
    out = image.convert("RGB").copy()
    side = min(out.size)
    w = max(1, side // 100)
    if region.kind == "mask":
        m = np.asarray(region.data, dtype=bool)
        arr = np.asarray(out, dtype=np.float32)
        arr[m] = 0.5 * arr[m] + 0.5 * np.asarray(colour, np.float32)
        return Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    if region.kind == "point":
        x, y = np.asarray(region.data, dtype=float).reshape(2)
        r = max(2.0, side / 50)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=w)
    elif region.kind == "box":
        x0, y0, x1, y1 = np.asarray(region.data, dtype=float).reshape(4)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=w)
    elif region.kind == "scribble":
        pts = [tuple(p) for p in np.asarray(region.data, dtype=float).reshape(-1, 2)]
        draw.line(pts, fill=colour, width=w + 1)
    else:
        raise ValueError(f"unknown region kind {region.kind!r}; use point, box, scribble or mask")
    return out


def _links(sample: Sample) -> list[tuple[str, str]]:
    """(routing token, name) of every link in the conversation, in order."""
    out = []
    for turn in sample.conversation:
        last = 0
        for m in _ROUTING_RE.finditer(turn.content):
            out.append((m.group(0), link_name(turn.content[last : m.start()])))
            last = m.end()
    return out


def draw_sample(sample: Sample) -> Image.Image:
    """The sample's first image with its region prompts and every link target drawn and
    labelled by the link's name; for a generation sample (no input image), its target image."""
    links = _links(sample)
    if not sample.images:
        for t in sample.targets:
            if t is not None and t.image is not None:
                return t.image.convert("RGB").copy()
        raise ValueError("the sample has neither an input image nor a target image to draw")
    out = sample.images[0].convert("RGB")
    for r in sample.regions:
        out = draw_region(out, r)
    for (_, name), t in zip(links, sample.targets, strict=False):
        if t is None or t.boxes is None:
            continue
        n = len(t.boxes)
        if n == 0:
            continue
        skeleton = None
        if t.keypoints is not None and name in FIGURES:
            skeleton = FIGURES[name][1]
        out = draw_annotations(
            out,
            boxes=None if t.semantic else t.boxes,
            labels=[name] * n,
            masks=t.masks,
            keypoints=t.keypoints,
            skeleton=skeleton,
        )
    return out


def draw_result(image: Image.Image, result: Result | Sequence[Any]) -> Image.Image:
    """``image`` with an inference result's detections (boxes, RLE masks, named keypoints) and
    semantic maps drawn on it."""
    items = result.items if isinstance(result, Result) else list(result)
    out = image.convert("RGB")
    for item in items:
        if isinstance(item, SemanticMap):
            for k, label in enumerate(item.labels):
                m = item.classes == k
                if m.any():
                    out = draw_annotations(out, masks=m[None], labels=[label])
        elif isinstance(item, Detection):
            mask = None
            if item.mask is not None:
                mask = rle_to_mask(item.mask)[None]
            kps, skeleton = None, None
            if item.keypoints:
                names = list(item.keypoints)
                kps = np.array([[[*item.keypoints[n][:2], 2.0] for n in names]], dtype=np.float32)
                pairs = NAMED_SKELETONS.get(item.label, [])
                skeleton = [(names.index(a), names.index(b)) for a, b in pairs if a in names and b in names]
            out = draw_annotations(
                out,
                boxes=[item.box],
                labels=[item.label],
                scores=[item.score],
                masks=mask,
                keypoints=kps,
                skeleton=skeleton,
            )
    return out
