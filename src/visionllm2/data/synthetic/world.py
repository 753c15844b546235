"""Deterministic synthetic world: coloured shapes, articulated figures and words with exact ground truth.

A :class:`Scene` is plain data; :func:`render` turns it into an image plus exact annotations
(visible masks, boxes, keypoints with visibility, semantic map). Everything random comes from
the seed, so a scene and its re-rendering after an edit share the same background pixels.

Design choices that keep the ground truth unambiguous (and the verifier possible):
- shapes are axis-aligned, fill their square box, and are rasterised without anti-aliasing,
  so the mask *is* the painted pixels;
- shapes are saturated palette colours, backgrounds are low-saturation greys, figures and words
  are dark, so colour alone separates shapes from everything else;
- a shape may hide at most ``max_occlusion`` of another and never split it in two; shapes of
  one colour never touch; shape centres keep clear of the 3x3 grid lines, so "top left" etc.
  are never borderline.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from visionllm2.data.builders import ObjectAnn
from visionllm2.ops.keypoints import COCO_KEYPOINT_NAMES

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon", "cross")
# Hues at least 25 degrees apart, all saturated; a darker tone (x0.6) of each is its texture.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 125, 0),
    "yellow": (235, 220, 20),
    "green": (40, 175, 45),
    "cyan": (0, 195, 215),
    "blue": (35, 65, 225),
    "purple": (140, 45, 215),
    "pink": (245, 85, 175),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
TEXTURE_SHADE = 0.6  # texture marks are the shape's colour times this
SIZE_WORDS: tuple[str, ...] = ("small", "medium", "large")

# The 17 COCO person keypoints and skeleton (0-based pairs; COCO JSON stores them 1-based).
PERSON_KEYPOINTS: tuple[str, ...] = COCO_KEYPOINT_NAMES
PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
# A four-legged animal with the AP-10K keypoint names and skeleton.
DOG_KEYPOINTS: tuple[str, ...] = (
    "left_eye",
    "right_eye",
    "nose",
    "neck",
    "root_of_tail",
    "left_shoulder",
    "left_elbow",
    "left_front_paw",
    "right_shoulder",
    "right_elbow",
    "right_front_paw",
    "left_hip",
    "left_knee",
    "left_back_paw",
    "right_hip",
    "right_knee",
    "right_back_paw",
)
DOG_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9), (9, 10),
    (4, 11), (11, 12), (12, 13), (4, 14), (14, 15), (15, 16),
)  # fmt: skip
FIGURES: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int], ...]]] = {
    "person": (PERSON_KEYPOINTS, PERSON_SKELETON),
    "dog": (DOG_KEYPOINTS, DOG_SKELETON),
}
WORDS: tuple[str, ...] = (
    "cat", "sun", "map", "box", "key", "cup", "hat", "tree", "fish", "bird", "moon", "lamp",
    "book", "road", "ship", "frog", "kite", "milk", "rain", "snow", "wind", "gold", "jam", "pen",
    "zip", "owl", "fox", "bus", "egg", "ink",
)  # fmt: skip
# Category names of the world; semantic maps store index + 1 (0 = background).
CATEGORIES: tuple[str, ...] = (*KINDS, "person", "dog", "text")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)  # fmt: skip
_POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
PATTERNS: tuple[str, ...] = ("plain", "gradient", "stripes", "checker", "blobs")
EDIT_OPS: tuple[str, ...] = ("recolour", "move", "add", "remove", "resize")


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the scene generator. Sizes are fractions of the image's shorter side."""

    width: int = 128
    height: int = 128
    min_shapes: int = 1
    max_shapes: int = 5
    min_size: float = 0.12
    max_size: float = 0.30
    max_occlusion: float = 0.35  # the most of a shape (or figure) that others may hide
    p_person: float = 0.3
    p_dog: float = 0.25
    p_word: float = 0.3
    textures: bool = True
    same_colour_gap: int = 2  # pixels between shapes of one colour, so they never merge
    grid_margin: float = 0.04  # shape centres stay this far from the 3x3 grid lines

    def __post_init__(self) -> None:
        if self.width < 32 or self.height < 32:
            raise ValueError(f"images must be at least 32x32, got {self.width}x{self.height}")
        if not 0 <= self.min_shapes <= self.max_shapes:
            raise ValueError(f"need 0 <= min_shapes <= max_shapes, got {self.min_shapes}, {self.max_shapes}")
        if not 0 < self.min_size <= self.max_size < 0.5:
            raise ValueError(f"need 0 < min_size <= max_size < 0.5, got {self.min_size}, {self.max_size}")
        if self.min_px < 10:
            raise ValueError(
                f"shapes of {self.min_px}px are too small to tell apart; raise min_size or the image size"
            )
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")

    @property
    def side(self) -> int:
        return min(self.width, self.height)

    @property
    def min_px(self) -> int:
        return int(math.ceil(self.min_size * self.side))

    @property
    def max_px(self) -> int:
        return int(self.max_size * self.side)

    @property
    def resize_max_px(self) -> int:
        """Largest side a resize edit may produce."""
        return int(0.4 * self.side)


@dataclass(frozen=True)
class Background:
    """Low-saturation grey background: base colour, a pattern and luminance noise."""

    base: tuple[int, int, int]
    pattern: str
    period: int
    angle: float
    amplitude: float
    noise: float
    seed: int


@dataclass(frozen=True)
class Shape:
    """A shape filling the square box ``[x, x + size) x [y, y + size)``."""

    kind: str
    colour: str
    x: int
    y: int
    size: int
    texture: str = "solid"
    rgb: tuple[int, int, int] | None = None  # None: the palette colour
    pattern: tuple[int, int] = (0, 5)  # texture (orientation 0-2, period)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.size / 2, self.y + self.size / 2)

    @property
    def colour_rgb(self) -> tuple[int, int, int]:
        return self.rgb if self.rgb is not None else COLOURS[self.colour]


@dataclass(frozen=True, eq=False)
class Figure:
    """An articulated figure: named keypoints and the drawing primitives of its body.

    ``parts`` are ("line", (x0, y0, x1, y1), width) or ("disc", (x, y, r), 0) or
    ("poly", (x0, y0, x1, y1, ...), 0); ``hidden`` marks keypoints the figure hides itself
    (e.g. the far eye of an animal seen from the side): labelled but not visible.
    """

    category: str
    keypoints: np.ndarray  # (P, 2) float x, y
    hidden: tuple[bool, ...]
    parts: tuple[tuple[str, tuple[float, ...], int], ...]
    tone: tuple[int, int, int]
    facing: str


@dataclass(frozen=True)
class Word:
    """A short dark word, drawn without anti-aliasing with the default font at ``font_size``."""

    text: str
    x: int
    y: int
    font_size: int
    tone: tuple[int, int, int] = (20, 20, 20)


@dataclass
class Scene:
    """A full scene: background, figures (drawn first), shapes (in z order), words (on top)."""

    width: int
    height: int
    background: Background
    shapes: list[Shape] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    seed: int | None = None

    def copy(self, **changes: Any) -> Scene:
        return replace(
            self, shapes=list(self.shapes), figures=list(self.figures), words=list(self.words), **changes
        )

    def pairs(self) -> set[tuple[str, str]]:
        """The (kind, colour) pairs present."""
        return {(s.kind, s.colour) for s in self.shapes}


@dataclass
class Rendered:
    """An image with its exact annotations: ``objects`` lists shapes (z order), then figures,
    then words; ``semantic`` holds ``CATEGORIES`` index + 1 per pixel (0 = background)."""

    image: Image.Image
    objects: list[ObjectAnn]
    semantic: np.ndarray  # (H, W) uint8


# -- geometry ----------------------------------------------------------------------------------


def _unit_polygon(kind: str) -> list[tuple[float, float]] | None:
    """Vertices in the unit square (both axes touch 0 and 1); ``None`` for the circle."""
    if kind == "circle":
        return None
    if kind == "square":
        return [(0, 0), (1, 0), (1, 1), (0, 1)]
    if kind == "triangle":
        return [(0.5, 0), (1, 1), (0, 1)]
    if kind == "diamond":
        return [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)]
    if kind == "hexagon":
        return [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)]
    if kind == "cross":
        a, b = 1 / 3, 2 / 3
        return [
            (a, 0),
            (b, 0),
            (b, a),
            (1, a),
            (1, b),
            (b, b),
            (b, 1),
            (a, 1),
            (a, b),
            (0, b),
            (0, a),
            (a, a),
        ]
    if kind == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            t = math.radians(-90 + 36 * k)
            pts.append((r * math.cos(t), r * math.sin(t)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]
    raise ValueError(f"unknown shape kind {kind!r}; choose one of {KINDS}")


@functools.lru_cache(maxsize=1024)
def shape_template(kind: str, size: int) -> np.ndarray:
    """(size, size) bool mask of ``kind`` filling its box. Rendering and the verifier both use
    it, so a shape's pixels are the same wherever it is placed."""
    if size < 2:
        raise ValueError(f"shape size must be at least 2 pixels, got {size}")
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _unit_polygon(kind)
    if poly is None:
        draw.ellipse([0, 0, size - 1, size - 1], fill=1)
    else:
        draw.polygon([(u * (size - 1), v * (size - 1)) for u, v in poly], fill=1)
    out = np.asarray(canvas, dtype=bool)
    out.setflags(write=False)
    return out


def shape_mask(shape: Shape, width: int, height: int) -> np.ndarray:
    """(H, W) bool amodal mask of ``shape``: its template pasted at its box (clipped to the image)."""
    x, y, size = shape.x, shape.y, shape.size
    out = np.zeros((height, width), dtype=bool)
    t = shape_template(shape.kind, size)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = t[y0 - y : y1 - y, x0 - x : x1 - x]
    return out


def figure_mask(figure: Figure, width: int, height: int) -> np.ndarray:
    """(H, W) bool amodal mask of a figure."""
    canvas = Image.new("L", (width, height), 0)
    _draw_parts(ImageDraw.Draw(canvas), figure.parts, 1)
    return np.asarray(canvas, dtype=bool)


def _draw_parts(draw: ImageDraw.ImageDraw, parts: tuple, fill: Any) -> None:
    for kind, p, width in parts:
        if kind == "line":
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=fill, width=width)
        elif kind == "disc":
            x, y, r = p
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif kind == "poly":
            draw.polygon(list(zip(p[0::2], p[1::2], strict=True)), fill=fill)
        else:
            raise ValueError(f"unknown figure part {kind!r}")


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# Few entries: masks are full-size images, and a scene has at most a word or two.
@functools.lru_cache(maxsize=64)
def _word_mask_cached(text: str, x: int, y: int, font_size: int, width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # no anti-aliasing: the mask is exactly the painted pixels
    draw.text((x, y), text, fill=1, font=_font(font_size))
    out = np.asarray(canvas, dtype=bool)
    out.setflags(write=False)
    return out


def word_mask(word: Word, width: int, height: int) -> np.ndarray:
    """(H, W) bool mask of a word's glyph pixels (read-only)."""
    return _word_mask_cached(word.text, word.x, word.y, word.font_size, width, height)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box of a mask (x1, y1 exclusive, as pycocotools' toBbox); zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def grid_position(x: float, y: float, width: int, height: int) -> str:
    """3x3 grid label ("top left" ... "bottom right") of a point."""
    col = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return POSITIONS[3 * row + col]


def position_phrase(label: str) -> str:
    """``"top left"`` -> ``"at the top left"``, ``"center"`` -> ``"in the center"``."""
    if label not in _POSITION_PHRASES:
        raise ValueError(f"unknown position {label!r}; choose one of {POSITIONS}")
    return _POSITION_PHRASES[label]


def cell_range(label: str, width: int, height: int, margin: float) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) where a centre may lie to be in grid cell ``label``."""
    i = POSITIONS.index(label)
    row, col = divmod(i, 3)
    mx, my = margin * width, margin * height
    x_lo = col * width / 3 + (mx if col > 0 else 0)
    x_hi = (col + 1) * width / 3 - (mx if col < 2 else 0)
    y_lo = row * height / 3 + (my if row > 0 else 0)
    y_hi = (row + 1) * height / 3 - (my if row < 2 else 0)
    return x_lo, x_hi, y_lo, y_hi


def size_word(size: int, side: int) -> str:
    """ "small" / "medium" / "large" relative to the image's shorter side."""
    f = size / side
    return "small" if f < 0.17 else "large" if f > 0.24 else "medium"


# -- figures -----------------------------------------------------------------------------------


def _pt(p: np.ndarray) -> tuple[float, float]:
    return (float(p[0]), float(p[1]))


def make_person(rng: np.random.Generator, *, cx: float, top: float, height: float, facing: str) -> Figure:
    """A stick-and-disc person seen from the front or the back, ``height`` px tall, head top at
    ``top``. Seen from the back, the face keypoints are labelled but hidden."""
    if facing not in ("front", "back"):
        raise ValueError(f"a person faces 'front' or 'back', got {facing!r}")
    h = height
    r = 0.085 * h
    # The person's left is on the image's right when they face the viewer.
    s_left = 1.0 if facing == "front" else -1.0
    hc = np.array([cx, top + r])
    k: dict[str, np.ndarray] = {}
    k["nose"] = hc + [0, 0.25 * r]
    k["left_eye"] = hc + [s_left * 0.4 * r, -0.15 * r]
    k["right_eye"] = hc + [-s_left * 0.4 * r, -0.15 * r]
    k["left_ear"] = hc + [s_left * 0.8 * r, 0]
    k["right_ear"] = hc + [-s_left * 0.8 * r, 0]
    sh_y, hip_y = top + 2 * r + 0.06 * h, top + 0.52 * h
    t = max(2, int(round(0.035 * h)))
    parts: list[tuple[str, tuple[float, ...], int]] = []
    for side, sgn in (("left", s_left), ("right", -s_left)):
        sh = np.array([cx + sgn * 0.12 * h, sh_y])
        a = rng.uniform(-0.2, 2.2)  # upper-arm angle from hanging down, outwards positive
        b = a + rng.uniform(-0.5, 1.0)
        el = sh + 0.16 * h * np.array([sgn * math.sin(a), math.cos(a)])
        wr = el + 0.15 * h * np.array([sgn * math.sin(b), math.cos(b)])
        hip = np.array([cx + sgn * 0.075 * h, hip_y])
        c = rng.uniform(-0.05, 0.45)
        d = c + rng.uniform(-0.3, 0.2)
        kn = hip + 0.22 * h * np.array([sgn * math.sin(c), math.cos(c)])
        an = kn + 0.22 * h * np.array([sgn * math.sin(d), math.cos(d)])
        k[f"{side}_shoulder"], k[f"{side}_elbow"], k[f"{side}_wrist"] = sh, el, wr
        k[f"{side}_hip"], k[f"{side}_knee"], k[f"{side}_ankle"] = hip, kn, an
    ls, rs, lh, rh = k["left_shoulder"], k["right_shoulder"], k["left_hip"], k["right_hip"]
    parts.append(("poly", (*_pt(ls), *_pt(rs), *_pt(rh), *_pt(lh)), 0))
    parts.append(("line", (cx, hc[1], cx, sh_y), t + 1))  # neck
    parts.append(("disc", (float(hc[0]), float(hc[1]), r), 0))
    for side in ("left", "right"):
        chain = [k[f"{side}_shoulder"], k[f"{side}_elbow"], k[f"{side}_wrist"]]
        chain2 = [k[f"{side}_hip"], k[f"{side}_knee"], k[f"{side}_ankle"]]
        for p, q in (*zip(chain, chain[1:]), *zip(chain2, chain2[1:])):
            parts.append(("line", (*_pt(p), *_pt(q)), t))
        for p in (*chain, *chain2):  # round joints, so every keypoint lies on the body
            parts.append(("disc", (*_pt(p), t / 2 + 0.5), 0))
    kps = np.stack([k[n] for n in PERSON_KEYPOINTS]).astype(np.float32)  # (17, 2)
    hidden = tuple(facing == "back" and n in ("nose", "left_eye", "right_eye") for n in PERSON_KEYPOINTS)
    g = int(rng.integers(25, 56))
    tone = tuple(int(np.clip(g + rng.integers(-6, 7), 0, 70)) for _ in range(3))
    return Figure("person", kps, hidden, tuple(parts), tone, facing)  # type: ignore[arg-type]


def make_dog(rng: np.random.Generator, *, cx: float, back_y: float, length: float, facing: str) -> Figure:
    """A four-legged animal seen from the side, ``length`` px from neck to tail root. The near
    side's legs are drawn over the far side's; the far eye and far shoulder/hip are hidden."""
    if facing not in ("left", "right"):
        raise ValueError(f"a dog faces 'left' or 'right', got {facing!r}")
    L = length
    d = 1.0 if facing == "right" else -1.0
    # An animal walking to the image's right shows its left side.
    near, far = ("left", "right") if facing == "right" else ("right", "left")
    k: dict[str, np.ndarray] = {}
    k["neck"] = np.array([cx + d * L / 2, back_y])
    k["root_of_tail"] = np.array([cx - d * L / 2, back_y + rng.uniform(-0.05, 0.05) * L])
    hc = k["neck"] + [d * 0.22 * L, -0.22 * L]
    r = 0.14 * L
    k["nose"] = hc + [d * 0.75 * r, 0.25 * r]
    k[f"{near}_eye"] = hc + [d * 0.3 * r, -0.35 * r]
    k[f"{far}_eye"] = hc + [d * 0.55 * r, -0.4 * r]
    t = max(2, int(round(0.07 * L)))
    bw = 0.28 * L
    for side, off in ((near, 0.0), (far, 1.0)):
        shift = np.array([d * 0.07 * L, -0.02 * L]) * off
        sh = k["neck"] + [-d * 0.1 * L, 0.12 * L] + shift
        hip = k["root_of_tail"] + [d * 0.1 * L, 0.12 * L] + shift
        el = sh + [d * rng.uniform(-0.08, 0.08) * L, 0.25 * L]
        fp = el + [d * rng.uniform(-0.08, 0.08) * L, 0.22 * L]
        kn = hip + [d * rng.uniform(-0.1, 0.05) * L, 0.25 * L]
        bp = kn + [d * rng.uniform(-0.05, 0.1) * L, 0.22 * L]
        k[f"{side}_shoulder"], k[f"{side}_elbow"], k[f"{side}_front_paw"] = sh, el, fp
        k[f"{side}_hip"], k[f"{side}_knee"], k[f"{side}_back_paw"] = hip, kn, bp

    def leg_parts(side: str) -> list[tuple[str, tuple[float, ...], int]]:
        out: list[tuple[str, tuple[float, ...], int]] = []
        for names in (("shoulder", "elbow", "front_paw"), ("hip", "knee", "back_paw")):
            pts = [k[f"{side}_{n}"] for n in names]
            for p, q in zip(pts, pts[1:]):
                out.append(("line", (*_pt(p), *_pt(q)), t))
            out.extend(("disc", (*_pt(p), t / 2 + 0.5), 0) for p in pts)
        return out

    tail_tip = k["root_of_tail"] + [-d * 0.3 * L, -0.2 * L * rng.uniform(0.3, 1.0)]
    body = [
        ("line", (*_pt(k["neck"]), *_pt(k["root_of_tail"])), int(round(bw))),
        ("disc", (*_pt(k["neck"]), bw / 2), 0),
        ("disc", (*_pt(k["root_of_tail"]), bw / 2), 0),
        ("line", (*_pt(k["root_of_tail"]), *_pt(tail_tip)), t),
        ("line", (*_pt(k["neck"]), *_pt(hc)), int(round(0.15 * L))),
        ("disc", (float(hc[0]), float(hc[1]), r), 0),
    ]
    near_parts = body + leg_parts(near)
    parts = tuple(leg_parts(far) + near_parts)
    kps = np.stack([k[n] for n in DOG_KEYPOINTS]).astype(np.float32)  # (17, 2)
    # Far-side keypoints under the near side's body or legs are hidden by the animal itself.
    w, h = int(cx + 2 * L + 4), int(back_y + 2 * L + 4)
    canvas = Image.new("L", (max(w, 1), max(h, 1)), 0)
    _draw_parts(ImageDraw.Draw(canvas), tuple(near_parts), 1)
    near_mask = np.asarray(canvas, dtype=bool)
    hidden = []
    for name, p in zip(DOG_KEYPOINTS, kps, strict=True):
        xi, yi = int(round(p[0])), int(round(p[1]))
        inside = 0 <= yi < near_mask.shape[0] and 0 <= xi < near_mask.shape[1] and near_mask[yi, xi]
        hidden.append(name == f"{far}_eye" or (name.startswith(far) and bool(inside)))
    g = int(rng.integers(30, 51))
    tone = (g + 15, g + 5, max(0, g - 5))
    return Figure("dog", kps, tuple(hidden), parts, tone, facing)


# -- rendering ---------------------------------------------------------------------------------


def _background(bg: Background, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(bg.seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = xx * math.cos(bg.angle) + yy * math.sin(bg.angle)
    if bg.pattern == "plain":
        lum = np.zeros_like(xx)
    elif bg.pattern == "gradient":
        lum = bg.amplitude * (u / max(width, height) - 0.5) * 2
    elif bg.pattern == "stripes":
        lum = 0.5 * bg.amplitude * np.sign(np.sin(2 * math.pi * u / bg.period))
    elif bg.pattern == "checker":
        lum = 0.5 * bg.amplitude * ((((xx // bg.period) + (yy // bg.period)) % 2) * 2 - 1)
    elif bg.pattern == "blobs":
        small = rng.uniform(-1, 1, (max(2, height // 16), max(2, width // 16))).astype(np.float32)
        lum = bg.amplitude * np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; choose one of {PATTERNS}")
    lum = lum + rng.normal(0, bg.noise, (height, width)).astype(np.float32)
    # Mostly luminance noise plus a little per-channel noise: textured yet unsaturated.
    img = np.asarray(bg.base, np.float32) + lum[..., None] + rng.normal(0, 1.5, (height, width, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _shape_pixels(shape: Shape) -> np.ndarray:
    """(size, size, 3) uint8 colours of a shape's box, texture included (relative to the box,
    so a moved shape looks the same)."""
    s = shape.size
    rgb = np.asarray(shape.colour_rgb, np.float32)
    out = np.broadcast_to(rgb, (s, s, 3)).copy()
    if shape.texture != "solid":
        v, u = np.mgrid[0:s, 0:s]
        orient, period = shape.pattern
        if shape.texture == "striped":
            coord = (v, u, u + v)[orient]
            marks = (coord % period) < max(1, period // 2)
        elif shape.texture == "dotted":
            marks = ((u % period) < 2) & ((v % period) < 2)
        else:
            raise ValueError(f"unknown texture {shape.texture!r}; choose one of {TEXTURES}")
        out[marks] = rgb * TEXTURE_SHADE
    return np.round(out).astype(np.uint8)


def render(scene: Scene) -> Rendered:
    """Draw a scene and compute its exact annotations."""
    W, H = scene.width, scene.height
    img = _background(scene.background, W, H)
    sem = np.zeros((H, W), np.uint8)
    layers: list[tuple[str, int, np.ndarray]] = []  # (source, index, amodal mask) in draw order
    for i, fig in enumerate(scene.figures):
        m = figure_mask(fig, W, H)
        img[m] = fig.tone
        sem[m] = CATEGORIES.index(fig.category) + 1
        layers.append(("figure", i, m))
    for i, shape in enumerate(scene.shapes):
        m = shape_mask(shape, W, H)
        x0, y0, x1, y1 = shape.box
        pix = _shape_pixels(shape)
        crop = m[max(y0, 0) : y1, max(x0, 0) : x1]
        region = img[max(y0, 0) : y1, max(x0, 0) : x1]
        region[crop] = pix[
            max(0, -y0) : max(0, -y0) + crop.shape[0], max(0, -x0) : max(0, -x0) + crop.shape[1]
        ][crop]
        sem[m] = CATEGORIES.index(shape.kind) + 1
        layers.append(("shape", i, m))
    for i, word in enumerate(scene.words):
        m = word_mask(word, W, H)
        img[m] = word.tone
        sem[m] = CATEGORIES.index("text") + 1
        layers.append(("word", i, m))

    # Visible part of each layer: not covered by anything drawn later.
    covered = np.zeros((H, W), bool)
    visible: dict[tuple[str, int], np.ndarray] = {}
    covered_above: dict[tuple[str, int], np.ndarray] = {}
    for source, i, m in reversed(layers):
        visible[(source, i)] = m & ~covered
        covered_above[(source, i)] = covered.copy()
        covered |= m

    objects: list[ObjectAnn] = []
    side = min(W, H)
    for i, shape in enumerate(scene.shapes):
        vis = visible[("shape", i)]
        amodal = shape_mask(shape, W, H)
        cx, cy = shape.centre
        objects.append(
            ObjectAnn(
                label=shape.kind,
                box=mask_box(vis),
                mask=vis,
                attributes={
                    "source": "shape",
                    "index": i,
                    "kind": shape.kind,
                    "colour": shape.colour,
                    "texture": shape.texture,
                    "size": size_word(shape.size, side),
                    "position": grid_position(cx, cy, W, H),
                    "centre": (cx, cy),
                    "amodal_box": np.asarray(shape.box, np.float32),
                    "visible_fraction": float(vis.sum() / max(1, amodal.sum())),
                },
            )
        )
    for i, fig in enumerate(scene.figures):
        vis = visible[("figure", i)]
        amodal = next(m for s, j, m in layers if s == "figure" and j == i)
        above = covered_above[("figure", i)]
        kp = np.zeros((len(fig.keypoints), 3), np.float32)
        kp[:, :2] = fig.keypoints
        for p, (x, y) in enumerate(fig.keypoints):
            xi, yi = int(round(float(x))), int(round(float(y)))
            if not (0 <= xi < W and 0 <= yi < H):
                kp[p] = 0  # outside the image: not labelled (COCO v = 0)
                continue
            kp[p, 2] = 1 if fig.hidden[p] or above[yi, xi] else 2
        box = mask_box(amodal)
        objects.append(
            ObjectAnn(
                label=fig.category,
                box=mask_box(vis),
                mask=vis,
                keypoints=kp,
                attributes={
                    "source": "figure",
                    "index": i,
                    "facing": fig.facing,
                    "position": grid_position((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, W, H),
                    "amodal_mask": amodal,
                    "visible_fraction": float(vis.sum() / max(1, amodal.sum())),
                },
            )
        )
    for i, word in enumerate(scene.words):
        vis = visible[("word", i)]
        box = mask_box(vis)
        objects.append(
            ObjectAnn(
                label="text",
                box=box,
                mask=vis,
                attributes={
                    "source": "word",
                    "index": i,
                    "text": word.text,
                    "position": grid_position((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, W, H),
                },
            )
        )
    return Rendered(Image.fromarray(img, "RGB"), objects, sem)


# -- validity ----------------------------------------------------------------------------------


def _single_component(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return False
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    _, n = ndimage.label(crop)  # 4-connectivity: stricter than the verifier's 8
    return n == 1


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=r) if r > 0 else mask


def validate_scene(scene: Scene, config: WorldConfig) -> list[str]:
    """Everything that would make the ground truth ambiguous; empty when the scene is valid."""
    W, H = scene.width, scene.height
    problems: list[str] = []
    shape_masks = [shape_mask(s, W, H) for s in scene.shapes]
    fig_masks = [figure_mask(f, W, H) for f in scene.figures]
    word_masks = [word_mask(w, W, H) for w in scene.words]
    for i, s in enumerate(scene.shapes):
        if s.kind not in KINDS or s.colour not in COLOURS:
            problems.append(f"shape {i}: unknown kind/colour {s.kind}/{s.colour}")
        if s.x < 0 or s.y < 0 or s.x + s.size > W or s.y + s.size > H:
            problems.append(f"shape {i}: box {s.box} leaves the {W}x{H} image")
        if not config.min_px <= s.size <= config.resize_max_px:
            problems.append(f"shape {i}: size {s.size} outside [{config.min_px}, {config.resize_max_px}]")
        cx, cy = s.centre
        for v, extent in ((cx, W), (cy, H)):
            if any(abs(v - extent * f) < config.grid_margin * extent for f in (1 / 3, 2 / 3)):
                problems.append(f"shape {i}: centre {s.centre} too close to a grid line")
                break
    for i, s in enumerate(scene.shapes):
        above = np.zeros((H, W), bool)
        for m in shape_masks[i + 1 :] + word_masks:
            above |= m
        vis = shape_masks[i] & ~above
        if vis.sum() < (1 - config.max_occlusion) * shape_masks[i].sum():
            problems.append(f"shape {i}: more than {config.max_occlusion:.0%} hidden")
        elif not _single_component(vis):
            problems.append(f"shape {i}: its visible part is split in pieces")
        for j in range(i + 1, len(scene.shapes)):
            if (
                scene.shapes[j].colour == s.colour
                and (_dilate(shape_masks[i], config.same_colour_gap) & shape_masks[j]).any()
            ):
                problems.append(f"shapes {i} and {j}: same colour and touching")
    all_shapes = np.zeros((H, W), bool)
    for m in shape_masks:
        all_shapes |= m
    for i, (f, m) in enumerate(zip(scene.figures, fig_masks, strict=True)):
        kp = f.keypoints
        if (kp < 0).any() or (kp[:, 0] >= W).any() or (kp[:, 1] >= H).any():
            problems.append(f"figure {i}: keypoints leave the image")
        vis = m & ~all_shapes
        if vis.sum() < (1 - config.max_occlusion) * m.sum():
            problems.append(f"figure {i}: more than {config.max_occlusion:.0%} hidden")
        for j in range(i + 1, len(scene.figures)):
            if (_dilate(m, 2) & fig_masks[j]).any():
                problems.append(f"figures {i} and {j} touch")
    others = all_shapes.copy()
    for m in fig_masks:
        others |= m
    for i, (w, m) in enumerate(zip(scene.words, word_masks, strict=True)):
        x0, y0, x1, y1 = mask_box(m)
        if x1 == 0 or x0 < 1 or y0 < 1 or x1 > W - 1 or y1 > H - 1:
            problems.append(f"word {i} ({w.text!r}) leaves the image")
        box = np.zeros((H, W), bool)
        box[int(y0) : int(y1), int(x0) : int(x1)] = True
        if (_dilate(box, 2) & others).any():
            problems.append(f"word {i} ({w.text!r}) touches another object")
        for j in range(i + 1, len(scene.words)):
            if (_dilate(m, 3) & word_masks[j]).any():
                problems.append(f"words {i} and {j} touch")
    return problems


# -- generation --------------------------------------------------------------------------------


def heldout_pairs(seed: int, n: int = 6) -> frozenset[tuple[str, str]]:
    """``n`` (kind, colour) pairs held out of training: distinct kinds and distinct colours, so
    every kind and every colour still appears in training with other partners."""
    if not 0 <= n <= min(len(KINDS), len(COLOURS)):
        raise ValueError(f"n must be between 0 and {min(len(KINDS), len(COLOURS))}, got {n}")
    rng = np.random.default_rng([seed, 7])
    kinds = [KINDS[i] for i in rng.permutation(len(KINDS))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    return frozenset(zip(kinds[:n], colours[:n]))


def _sample_background(rng: np.random.Generator) -> Background:
    g = float(rng.uniform(150, 215))
    base = tuple(int(round(g + rng.uniform(-10, 10))) for _ in range(3))
    return Background(
        base=base,  # type: ignore[arg-type]
        pattern=PATTERNS[int(rng.integers(len(PATTERNS)))],
        period=int(rng.integers(6, 16)),
        angle=float(rng.uniform(0, math.pi)),
        amplitude=float(rng.uniform(8, 25)),
        noise=float(rng.uniform(2, 7)),
        seed=int(rng.integers(2**31)),
    )


def _sample_shape(
    rng: np.random.Generator, config: WorldConfig, kind: str, colour: str, *, cell: str | None = None
) -> Shape | None:
    """A random placement of (kind, colour), optionally with its centre in grid ``cell``."""
    W, H = config.width, config.height
    size = int(rng.integers(config.min_px, config.max_px + 1))
    if cell is None:
        x = int(rng.integers(0, W - size + 1))
        y = int(rng.integers(0, H - size + 1))
    else:
        x_lo, x_hi, y_lo, y_hi = cell_range(cell, W, H, config.grid_margin)
        x_lo, x_hi = max(x_lo, size / 2), min(x_hi, W - size / 2)
        y_lo, y_hi = max(y_lo, size / 2), min(y_hi, H - size / 2)
        if x_hi <= x_lo or y_hi <= y_lo:
            return None
        x = int(math.floor(rng.uniform(x_lo, x_hi) - size / 2))
        y = int(math.floor(rng.uniform(y_lo, y_hi) - size / 2))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))] if config.textures else "solid"
    base = np.asarray(COLOURS[colour])
    rgb = tuple(int(v) for v in np.clip(base + rng.integers(-6, 7, 3), 0, 255))
    pattern = (int(rng.integers(3)), int(rng.integers(4, 7)))
    return Shape(kind, colour, x, y, size, texture, rgb, pattern)  # type: ignore[arg-type]


def _random_pair(rng: np.random.Generator, exclude: frozenset[tuple[str, str]]) -> tuple[str, str]:
    allowed = [(k, c) for k in KINDS for c in COLOURS if (k, c) not in exclude]
    if not allowed:
        raise ValueError("every (kind, colour) pair is excluded")
    return allowed[int(rng.integers(len(allowed)))]


def _place_figures(rng: np.random.Generator, scene: Scene, config: WorldConfig) -> None:
    W, H = config.width, config.height
    wanted = []
    if rng.random() < config.p_person:
        wanted.append("person")
    if rng.random() < config.p_dog:
        wanted.append("dog")
    for category in wanted:
        for _ in range(20):
            # Centres are drawn where the figure's reach (arms, tail, head, paws) fits the frame.
            if category == "person":
                h = rng.uniform(0.45, 0.75) * H
                fig = make_person(
                    rng,
                    cx=rng.uniform(0.4 * h, max(0.4 * h, W - 0.4 * h)),
                    top=rng.uniform(0.05 * h, max(0.05 * h, H - h)),
                    height=h,
                    facing="front" if rng.random() < 0.75 else "back",
                )
            else:
                L = rng.uniform(0.3, 0.42) * min(W, H)
                fig = make_dog(
                    rng,
                    cx=rng.uniform(0.85 * L, max(0.85 * L, W - 0.85 * L)),
                    back_y=rng.uniform(0.4 * L, max(0.4 * L, H - 0.62 * L)),
                    length=L,
                    facing="left" if rng.random() < 0.5 else "right",
                )
            m = figure_mask(fig, W + 2, H + 2)  # 1 px of slack detects parts that leave the image
            if m[:, W:].any() or m[H:, :].any():
                continue
            ys, xs = np.nonzero(m)
            if len(xs) == 0 or xs.min() < 1 or ys.min() < 1:
                continue
            trial = scene.copy()
            trial.figures.append(fig)
            if not validate_scene(trial, config):
                scene.figures.append(fig)
                break


def generate_scene(
    seed: int | np.random.Generator,
    config: WorldConfig | None = None,
    *,
    exclude_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    require_pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> Scene:
    """A random valid scene, the same for the same seed and config.

    ``exclude_pairs`` (kind, colour) never appear (the training side of a compositional split);
    ``require_pairs`` are placed first and always appear (the held-out side).
    """
    config = config or WorldConfig()
    exclude = frozenset(exclude_pairs)
    for pair in require_pairs:
        if pair[0] not in KINDS or pair[1] not in COLOURS:
            raise ValueError(f"required pair {pair} is not a (kind, colour) of the world")
        if pair in exclude:
            raise ValueError(f"pair {pair} is both required and excluded")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(50):
        scene = Scene(config.width, config.height, _sample_background(rng))
        scene.seed = None if isinstance(seed, np.random.Generator) else int(seed)
        _place_figures(rng, scene, config)
        n = int(rng.integers(config.min_shapes, config.max_shapes + 1))
        wanted = list(require_pairs) + [
            _random_pair(rng, exclude) for _ in range(max(0, n - len(require_pairs)))
        ]
        ok = True
        for j, (kind, colour) in enumerate(wanted):
            placed = False
            for _ in range(40):
                shape = _sample_shape(rng, config, kind, colour)
                if shape is None:
                    continue
                trial = scene.copy()
                trial.shapes.append(shape)
                if not validate_scene(trial, config):
                    scene.shapes.append(shape)
                    placed = True
                    break
            if not placed and j < len(require_pairs):
                ok = False
                break
        if not ok or len(scene.shapes) < config.min_shapes:
            continue
        if rng.random() < config.p_word:
            for _ in range(30):
                size = int(rng.integers(int(0.09 * config.side), int(0.13 * config.side) + 1))
                word = Word(
                    WORDS[int(rng.integers(len(WORDS)))],
                    int(rng.integers(1, config.width - 3 * size)),
                    int(rng.integers(0, config.height - size - 2)),
                    size,
                    tuple(int(rng.integers(10, 46)) for _ in range(3)),  # type: ignore[arg-type]
                )
                trial = scene.copy()
                trial.words.append(word)
                if not validate_scene(trial, config):
                    scene.words.append(word)
                    break
        return scene
    raise RuntimeError(
        f"could not place the required shapes {list(require_pairs)} in 50 attempts; "
        "use bigger images, fewer required pairs or a smaller min_size"
    )


# -- language ----------------------------------------------------------------------------------


def plural(name: str) -> str:
    """English plural of a category name."""
    if name == "person":
        return "people"
    if name.endswith(("s", "x", "sh", "ch")):
        return name + "es"
    return name + "s"


def shape_phrase(shape: Shape, side: int, *, size: bool = True, texture: bool = True) -> str:
    """``"large striped red circle"`` (size and texture words only when informative)."""
    words = []
    sw = size_word(shape.size, side)
    if size and sw != "medium":
        words.append(sw)
    if texture and shape.texture != "solid":
        words.append(shape.texture)
    words += [shape.colour, shape.kind]
    return " ".join(words)


def object_phrases(scene: Scene) -> list[str]:
    """One noun phrase with position per object, in reading order (top-left first)."""
    W, H, side = scene.width, scene.height, min(scene.width, scene.height)
    items: list[tuple[float, float, str]] = []
    for s in scene.shapes:
        cx, cy = s.centre
        items.append((cy, cx, f"a {shape_phrase(s, side)} {position_phrase(grid_position(cx, cy, W, H))}"))
    for f in scene.figures:
        x0, y0, x1, y1 = mask_box(figure_mask(f, W, H))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        items.append((cy, cx, f"a {f.category} {position_phrase(grid_position(cx, cy, W, H))}"))
    for w in scene.words:
        x0, y0, x1, y1 = mask_box(word_mask(w, W, H))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        items.append((cy, cx, f'the word "{w.text}" {position_phrase(grid_position(cx, cy, W, H))}'))
    # Reading order by grid row, then column, so the caption is stable under small moves.
    items.sort(key=lambda t: (int(3 * t[0] / H), int(3 * t[1] / W), t[0], t[1]))
    return [t[2] for t in items]


def caption(scene: Scene) -> str:
    """The exact caption of a scene: every object with its attributes and grid position."""
    phrases = object_phrases(scene)
    if not phrases:
        return "An empty background."
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[:1].upper() + text[1:] + "."


# -- editing -----------------------------------------------------------------------------------


@dataclass
class Edit:
    """One edit: ``index`` is the affected shape in ``source`` (or, for "add", in ``target``)."""

    op: str
    source: Scene
    target: Scene
    index: int
    params: dict[str, Any]


def edit_scene(
    scene: Scene,
    op: str,
    rng: np.random.Generator,
    *,
    config: WorldConfig | None = None,
    index: int | None = None,
    exclude_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    tries: int = 30,
) -> Edit | None:
    """Apply ``op`` (recolour, move, add, remove, resize) to a shape so that the result is a
    valid scene; ``None`` when no valid edit was found. The background is unchanged, so the
    target image differs from the source exactly where the edit acts."""
    config = config or WorldConfig(width=scene.width, height=scene.height)
    if op not in EDIT_OPS:
        raise ValueError(f"unknown edit {op!r}; choose one of {EDIT_OPS}")
    exclude = frozenset(exclude_pairs)
    n = len(scene.shapes)
    if op != "add" and n == 0:
        return None
    if index is not None and not 0 <= index < n:
        raise ValueError(f"shape index {index} out of range for a scene with {n} shapes")
    W, H = scene.width, scene.height
    for _ in range(tries):
        i = index if index is not None else (int(rng.integers(n)) if n else 0)
        target = scene.copy()
        params: dict[str, Any] = {}
        if op == "recolour":
            old = scene.shapes[i]
            choices = [c for c in COLOURS if c != old.colour and (old.kind, c) not in exclude]
            if not choices:
                return None
            colour = choices[int(rng.integers(len(choices)))]
            rgb = tuple(int(v) for v in np.clip(np.asarray(COLOURS[colour]) + rng.integers(-6, 7, 3), 0, 255))
            target.shapes[i] = replace(old, colour=colour, rgb=rgb)
            params = {"colour": colour}
        elif op == "move":
            old = scene.shapes[i]
            here = grid_position(*old.centre, W, H)
            cell = [p for p in POSITIONS if p != here][int(rng.integers(len(POSITIONS) - 1))]
            moved = _sample_shape(rng, config, old.kind, old.colour, cell=cell)
            if moved is None:
                continue
            # Keep the original size when it fits the cell, so only the position changes.
            x_lo, x_hi, y_lo, y_hi = cell_range(cell, W, H, config.grid_margin)
            s = old.size
            cx = float(np.clip(moved.centre[0], max(x_lo, s / 2), min(x_hi, W - s / 2)))
            cy = float(np.clip(moved.centre[1], max(y_lo, s / 2), min(y_hi, H - s / 2)))
            new = replace(old, x=int(math.floor(cx - s / 2)), y=int(math.floor(cy - s / 2)))
            if grid_position(*new.centre, W, H) != cell:
                continue
            target.shapes[i] = new
            params = {"position": cell}
        elif op == "add":
            kind, colour = _random_pair(rng, exclude)
            cell = POSITIONS[int(rng.integers(len(POSITIONS)))]
            new = _sample_shape(rng, config, kind, colour, cell=cell)
            if new is None:
                continue
            target.shapes.append(new)
            i = len(target.shapes) - 1
            params = {"kind": kind, "colour": colour, "texture": new.texture, "position": cell}
        elif op == "remove":
            del target.shapes[i]
        else:  # resize
            old = scene.shapes[i]
            bigger = bool(rng.random() < 0.5)
            factor = rng.uniform(1.35, 1.5) if bigger else rng.uniform(0.65, 0.75)
            s = int(round(old.size * factor))
            if not config.min_px <= s <= config.resize_max_px or s == old.size:
                continue
            cx, cy = old.centre
            target.shapes[i] = replace(old, x=int(round(cx - s / 2)), y=int(round(cy - s / 2)), size=s)
            params = {"bigger": "bigger" if bigger else "smaller", "scale": s / old.size}
        if not validate_scene(target, config):
            return Edit(op, scene, target, i, params)
    return None
