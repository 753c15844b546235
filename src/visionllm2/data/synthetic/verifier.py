"""World verifier: recover the shapes in any image (kind, colour, rough position) by image analysis alone.

Used to score generated and edited images without a model. The steps:

1. classify every pixel by hue as one of the world's colours, "dark" (figures, words) or
   background (low saturation);
2. split each colour into 8-connected components (shapes of one colour never touch);
3. fit every shape template to each component, allowing the part of the template that falls on
   other colours or dark pixels to be hidden (occlusion): the score of a template ``T`` on
   component ``C`` with background pixels ``B`` is ``|T & C| / (|C| + |T & B|)``, which is 1
   for the right kind at the right box however much of it another shape covers.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from visionllm2.data.synthetic.world import (
    COLOURS,
    EDIT_OPS,
    KINDS,
    Scene,
    Shape,
    grid_position,
    shape_template,
)

_EIGHT = np.ones((3, 3), dtype=bool)


def _hue_sat_val(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> hue in degrees [0, 360), saturation and value in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    delta = mx - mn
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    sat = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return hue, sat, mx


_PALETTE_NAMES = list(COLOURS)
_PALETTE_HUES = _hue_sat_val(np.asarray([list(COLOURS.values())], np.uint8))[0][0]  # (C,)

BACKGROUND, DARK, OTHER = -1, -2, -3


def classify_pixels(
    image: Image.Image | np.ndarray,
    *,
    min_saturation: float = 0.4,
    dark_value: float = 0.3,
    max_hue_distance: float = 20.0,
) -> np.ndarray:
    """(H, W) int labels: index into the world's colours, ``DARK`` (figures, words),
    ``OTHER`` (saturated but no world colour) or ``BACKGROUND``."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got an array of shape {rgb.shape}")
    hue, sat, val = _hue_sat_val(rgb)
    diff = np.abs(hue[..., None] - _PALETTE_HUES)  # (H, W, C)
    diff = np.minimum(diff, 360 - diff)
    nearest = diff.argmin(-1)
    labels = np.full(hue.shape, BACKGROUND, dtype=np.int16)
    chroma = (sat >= min_saturation) & (val >= dark_value)
    labels[chroma] = np.where(diff.min(-1)[chroma] <= max_hue_distance, nearest[chroma], OTHER)
    labels[val < dark_value] = DARK
    return labels


@dataclass
class FoundShape:
    """A shape recovered from pixels; ``box`` is the fitted (amodal) box, xyxy exclusive."""

    kind: str
    colour: str
    box: tuple[float, float, float, float]
    position: str
    score: float
    area: int

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def _scores(C: np.ndarray, B: np.ndarray, T: np.ndarray, n_c: int, step: int) -> np.ndarray:
    """Score of template T at every (y, x) offset in the padded C/B, on a ``step`` grid."""
    s = T.shape[0]
    tc = sliding_window_view(C, (s, s))[::step, ::step]  # (ny, nx, s, s)
    tb = sliding_window_view(B, (s, s))[::step, ::step]
    t = T.astype(np.float32)
    inter = np.einsum("yxij,ij->yx", tc, t)
    on_bg = np.einsum("yxij,ij->yx", tb, t)
    return inter / (n_c + on_bg)


def _fit_component(
    comp: np.ndarray, bg: np.ndarray, bbox: tuple[int, int, int, int], kinds: tuple[str, ...], max_grow: float
) -> tuple[str, tuple[int, int, int], float]:
    """Best (kind, (x, y, size), score) for one component (``comp``, ``bg`` full-image bool)."""
    H, W = comp.shape
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    s0 = max(w, h)
    n_c = int(comp[y0:y1, x0:x1].sum())

    def score_at(kind: str, x: int, y: int, s: int) -> float:
        T = shape_template(kind, s)
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + s, W), min(y + s, H)
        t = T[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
        inter = int((t & comp[cy0:cy1, cx0:cx1]).sum())
        # Template pixels outside the image count as background: shapes lie inside the frame.
        on_bg = int((t & bg[cy0:cy1, cx0:cx1]).sum()) + int(T.sum() - t.sum())
        return inter / (n_c + on_bg)

    # Fast path: an unoccluded shape fills its box, which is then the component's own box.
    best = (kinds[0], (x0, y0, s0), -1.0)
    for kind in kinds:
        for x, y in {(x0, y0), (x1 - s0, y1 - s0)}:
            sc = score_at(kind, x, y, s0)
            if sc > best[2]:
                best = (kind, (x, y, s0), sc)
    if best[2] >= 0.97:
        return best

    # Occluded: search sizes and offsets whose box contains the visible part, coarse then fine.
    s_max = max(s0 + 4, int(math.ceil(s0 * max_grow)))
    pad = s_max
    Cp = np.pad(comp, pad).astype(np.float32)
    Bp = np.pad(bg, pad, constant_values=True).astype(np.float32)
    cands: list[tuple[float, str, int, int, int]] = []
    for s in range(s0, s_max + 1, 2):
        # Offsets (in padded coordinates) from (x1 - s, y1 - s) to (x0, y0).
        ox0, oy0 = x1 - s + pad, y1 - s + pad
        region_c = Cp[oy0 : y0 + pad + s, ox0 : x0 + pad + s]
        region_b = Bp[oy0 : y0 + pad + s, ox0 : x0 + pad + s]
        for kind in kinds:
            sc = _scores(region_c, region_b, shape_template(kind, s), n_c, 2)
            iy, ix = np.unravel_index(int(sc.argmax()), sc.shape)
            cands.append((float(sc[iy, ix]), kind, x1 - s + 2 * int(ix), y1 - s + 2 * int(iy), s))
    cands.sort(key=lambda c: -c[0])
    for _, kind, cx, cy, s in cands[:6]:
        for ds in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ss = s + ds
                    if ss < max(2, s0 - 1):
                        continue
                    sc = score_at(kind, cx + dx, cy + dy, ss)
                    # Prefer the smaller template on (near) ties: the simplest explanation.
                    if sc > best[2] + 1e-6 or (abs(sc - best[2]) <= 1e-6 and ss < best[1][2]):
                        best = (kind, (cx + dx, cy + dy, ss), sc)
    return best


def find_shapes(
    image: Image.Image | np.ndarray,
    *,
    min_area: int | None = None,
    min_score: float = 0.5,
    kinds: tuple[str, ...] = KINDS,
    max_grow: float = 1.6,
    denoise: bool = False,
) -> list[FoundShape]:
    """Recover the shapes of an image.

    ``min_area`` drops smaller components (default about 0.12% of the image); ``denoise``
    applies a small opening per colour first, for blurry generated images; ``max_grow`` bounds
    how much larger than its visible part an occluded shape may be.
    """
    labels = classify_pixels(image)
    H, W = labels.shape
    if min_area is None:
        min_area = max(8, int(round(0.0012 * H * W)))
    bg = labels == BACKGROUND
    found: list[FoundShape] = []
    for ci, colour in enumerate(_PALETTE_NAMES):
        mask = labels == ci
        if denoise:
            mask = ndimage.binary_opening(mask, structure=_EIGHT)
        if mask.sum() < min_area:
            continue
        comps, n = ndimage.label(mask, structure=_EIGHT)
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            if sl is None:
                continue
            comp = comps == k
            area = int(comp[sl].sum())
            if area < min_area:
                continue
            bbox = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
            kind, (x, y, s), score = _fit_component(comp, bg, bbox, kinds, max_grow)
            if score < min_score:
                continue
            box = (float(x), float(y), float(x + s), float(y + s))
            pos = grid_position((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, W, H)
            found.append(FoundShape(kind, colour, box, pos, float(score), area))
    return found


def shape_entry(shape: Shape, width: int, height: int) -> dict[str, Any]:
    """What the verifier checks of one scene shape: kind, colour, centre, grid position, size."""
    cx, cy = shape.centre
    return {
        "kind": shape.kind,
        "colour": shape.colour,
        "centre": (cx, cy),
        "position": grid_position(cx, cy, width, height),
        "size": shape.size,
    }


def expected_shapes(scene: Scene) -> list[dict[str, Any]]:
    """The shapes a verifier should find in a rendered scene: kind, colour, centre, position, size."""
    return [shape_entry(s, scene.width, scene.height) for s in scene.shapes]


# A resize counts once the shape's side moved more than halfway to the requested scale (the
# world resizes by 1.35-1.5 or 0.65-0.75).
_BIGGER, _SMALLER = 1.175, 0.875


def edit_change_found(
    found: list[FoundShape],
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    width: int,
    height: int,
    tolerance: float = 0.1,
) -> bool:
    """Whether the shapes found in an edited image show the requested change.

    ``before`` / ``after`` are the edited shape's :func:`shape_entry` in the source and in the
    target scene (``before`` is None for "add", ``after`` for "remove"). The change happened when
    ``after`` is found (same kind, colour and grid cell, centre within ``tolerance`` x side) and
    ``before`` is not; for "resize", whose before and after share kind, colour and place, when the
    found shape's side moved more than halfway from the old size to the new one.
    """
    if op not in EDIT_OPS:
        raise ValueError(f"unknown edit {op!r}; choose one of {EDIT_OPS}")
    needs = {"add": (False, True), "remove": (True, False)}.get(op, (True, True))
    if (before is not None, after is not None) != needs:
        wanted = " and ".join(w for w, n in zip(("before", "after"), needs) if n)
        raise ValueError(
            f"a {op!r} edit needs the shape's entry {wanted} the edit, and only that "
            f"(got before={before is not None}, after={after is not None})"
        )
    side = max(width, height)

    def near(ref: dict[str, Any]) -> list[FoundShape]:
        return [
            f
            for f in found
            if f.kind == ref["kind"]
            and f.colour == ref["colour"]
            and f.position == ref["position"]
            and math.dist(f.centre, ref["centre"]) <= tolerance * side
        ]

    if op == "resize":
        bigger = after["size"] > before["size"]
        lo, hi = (before["size"] * _BIGGER, math.inf) if bigger else (0.0, before["size"] * _SMALLER)
        return any(lo <= f.box[2] - f.box[0] <= hi for f in near(after))
    present = after is None or bool(near(after))
    gone = before is None or not near(before)
    return present and gone


def match_shapes(
    found: list[FoundShape],
    expected: list[dict[str, Any]],
    *,
    width: int,
    height: int,
    tolerance: float = 0.1,
    check_position: bool = True,
) -> dict[str, Any]:
    """Greedy one-to-one matching of found to expected shapes: same kind and colour, and (with
    ``check_position``) the same grid cell and centres within ``tolerance`` x image side.

    Returns ``matched``, ``missed`` (expected not found), ``extra`` (found not expected) and
    ``accuracy`` = matched / (expected + extra), which is 1 only for a perfect recovery.
    """
    side = max(width, height)
    used: set[int] = set()
    matched = 0
    missed: list[dict[str, Any]] = []
    for e in expected:
        best, best_d = None, math.inf
        for j, f in enumerate(found):
            if j in used or f.kind != e["kind"] or f.colour != e["colour"]:
                continue
            d = math.dist(f.centre, e["centre"])
            if check_position and (d > tolerance * side or f.position != e["position"]):
                continue
            if d < best_d:
                best, best_d = j, d
        if best is None:
            missed.append(e)
        else:
            used.add(best)
            matched += 1
    extra = [f for j, f in enumerate(found) if j not in used]
    total = len(expected) + len(extra)
    return {
        "matched": matched,
        "missed": missed,
        "extra": extra,
        "accuracy": matched / total if total else 1.0,
    }


# Partial credit where the whole-shape match finds nothing: which of a shape's attributes a drawing
# got, each found shape standing for at most one expected shape.
RECALL_PARTS: dict[str, tuple[str, ...]] = {
    "colour": ("colour",),
    "colour_kind": ("colour", "kind"),
    "colour_cell": ("colour", "position"),
}


def attribute_recall(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> dict[str, float]:
    """For each of :data:`RECALL_PARTS`, the fraction of ``expected`` shapes that a found shape
    matches on those attributes, one to one (the multiset intersection of their attribute tuples;
    1.0 when nothing is expected). Both lists hold dicts with at least ``kind``, ``colour`` and
    ``position``: :func:`shape_entry` for expected shapes, those fields of a :class:`FoundShape`
    for found ones (as the world suite records them)."""
    if not expected:
        return dict.fromkeys(RECALL_PARTS, 1.0)
    out = {}
    for part, keys in RECALL_PARTS.items():
        have = Counter(tuple(f[k] for k in keys) for f in found)
        want = Counter(tuple(e[k] for k in keys) for e in expected)
        out[part] = sum((have & want).values()) / len(expected)
    return out
