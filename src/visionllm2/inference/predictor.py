"""User-facing predictor: ``VisionLLM2.from_pretrained(...).chat(image, prompt)`` -> ChatResult."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN
from visionllm2.data.sample import RegionPrompt, Sample, Turn
from visionllm2.inference.generate import GenerationConfig, generate
from visionllm2.inference.results import Detection, GeneratedImage, Result, SemanticMap
from visionllm2.modeling.builder import BUNDLED, from_pretrained
from visionllm2.modeling.model import VisionLLM2Model
from visionllm2.ops.masks import mask_to_rle

ImageLike = Image.Image | str | os.PathLike | np.ndarray | bytes

# Formats a user or a client may hand us. Anything else (TIFF, PSD, EPS...) is refused: the
# fewer decoders reachable from untrusted bytes, the smaller the attack surface.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

# The region-rewrite rule (see VisionLLM2.chat): a single visual prompt replaces the first
# deictic phrase ("this object", "the region", ...), which is how the training prompts phrase
# it ("What is the object in <region>?", "Describe <region>.").
_DEICTIC = re.compile(
    r"\b(?:this|that|the|the marked|the selected|the highlighted)\s+"
    r"(?:region|object|area|thing|item|part|spot)\b",
    re.IGNORECASE,
)


# -- images ----------------------------------------------------------------------------------
class ImageTooLarge(ValueError):
    """An image has more pixels than allowed (a guard against decompression bombs)."""


def load_image(source: ImageLike, *, max_pixels: int | None = None) -> Image.Image:
    """A PIL image, a path, encoded bytes or an (H, W[, 3|4]) array -> RGB PIL image.

    Arrays may be uint8 (0-255) or float (0-1). EXIF orientation is applied, so phone photos
    come out upright. With ``max_pixels`` the size is checked from the header *before* the
    pixels are decoded, so a tiny file that expands to gigapixels is refused cheaply.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        return _array_to_image(source)
    elif isinstance(source, (bytes, bytearray)):
        image = _open_checked(io.BytesIO(source), "the image bytes", max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist (or is not a file)")
        image = _open_checked(path, repr(str(path)), max_pixels)
    else:
        raise TypeError(
            f"cannot read an image from {type(source).__name__}; pass a PIL image, a file path, "
            "encoded bytes or an (H, W, 3) numpy array"
        )
    if max_pixels is not None:
        _check_pixels(image.size, max_pixels, "the image")
    try:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data shows up on decode
        raise ValueError(f"could not decode the image: {e}") from e


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageTooLarge(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels")


def _open_checked(fp: Any, what: str, max_pixels: int | None) -> Image.Image:
    try:
        image = Image.open(fp, formats=IMAGE_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what} is too large to decode: {e}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(
            f"{what} is not a readable image ({e}); supported formats: {', '.join(IMAGE_FORMATS)}"
        ) from e
    if max_pixels is not None:
        _check_pixels(image.size, max_pixels, what)
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{what} is too large to decode: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what} could not be decoded: {e}") from e
    return image


def _array_to_image(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"an image array must be uint8 or float, got {a.dtype}")
        if np.issubdtype(a.dtype, np.floating):
            a = a * 255.0  # float images are 0-1 by convention (skimage, matplotlib)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def image_key(image: Image.Image) -> str:
    """A content hash: equal pixels, equal key (whatever object or file they came from)."""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def image_to_base64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- regions and prompts -----------------------------------------------------------------------
def region_prompts(
    *,
    point: Sequence[float] | None = None,
    box: Sequence[float] | None = None,
    scribble: Sequence[Sequence[float]] | np.ndarray | None = None,
    mask: np.ndarray | Image.Image | None = None,
) -> list[RegionPrompt]:
    """Keyword visual prompts (pixels of the image) -> RegionPrompts, in the order point, box,
    scribble, mask. Shapes are checked here so a mistake names the argument."""
    out: list[RegionPrompt] = []
    if point is not None:
        p = np.asarray(point, dtype=np.float64)
        if p.shape != (2,):
            raise ValueError(f"point must be (x, y) in pixels, got {point!r}")
        out.append(RegionPrompt("point", tuple(p.tolist())))
    if box is not None:
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (4,) or b[2] <= b[0] or b[3] <= b[1]:
            raise ValueError(f"box must be (x0, y0, x1, y1) pixels with x0 < x1 and y0 < y1, got {box!r}")
        out.append(RegionPrompt("box", tuple(b.tolist())))
    if scribble is not None:
        s = np.asarray(scribble, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 2 or len(s) < 1:
            raise ValueError(f"scribble must be a list of (x, y) points, got an array of shape {s.shape}")
        out.append(RegionPrompt("scribble", s))
    if mask is not None:
        m = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
        if m.ndim != 2:
            raise ValueError(f"mask must be an (H, W) array the size of the image, got shape {m.shape}")
        if not m.any():
            raise ValueError("mask is empty: mark at least one pixel")
        out.append(RegionPrompt("mask", m > 0))
    return out


def place_regions(text: str, count: int) -> str:
    """Put ``count`` ``<region>`` tokens into a prompt that has none (the rewrite rule).

    - the prompt already has ``<region>`` tokens: unchanged (their count must match);
    - one region and a deictic phrase ("this object", "the region", "that area"...): the
      first such phrase becomes ``<region>`` ("What is this object?" -> "What is <region>?");
    - otherwise the prompt is prefixed: "Regarding <region>: What is it?" (several regions:
      "Regarding <region> and <region>: ...").
    """
    if count == 0 or REGION_TOKEN in text:
        return text
    if count == 1:
        m = _DEICTIC.search(text)
        if m:
            return text[: m.start()] + REGION_TOKEN + text[m.end() :]
    return f"Regarding {' and '.join([REGION_TOKEN] * count)}: {text}"


def strip_links(text: str, routing_tokens: Sequence[str]) -> str:
    """Remove routing tokens from an earlier turn, so replaying history never runs a decoder
    again (a [GEN] link would re-run diffusion every turn); its results stay on that turn."""
    for tok in routing_tokens:
        text = text.replace(tok, "")
    return text


# -- results ----------------------------------------------------------------------------------
@dataclass
class ChatResult:
    """One answer: the model's text and typed outputs, with what is needed to continue the chat.

    ``text`` is the raw answer (routing tokens such as ``[DET]`` kept: they show where the
    decoders were called); ``items`` are the decoders' outputs (:class:`Detection`,
    :class:`SemanticMap`, :class:`GeneratedImage`) in pixels of ``image``.
    """

    text: str
    items: list[Any] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    image: Image.Image | None = None
    conversation: list[Turn] = field(default_factory=list)  # up to and including this answer
    regions: list[RegionPrompt] = field(default_factory=list)  # one per <region> in the conversation
    finish_reason: str = "stop"  # "stop" (end token or stop string) or "length" (max_new_tokens)
    prompt_tokens: int = 0  # positions of the prompt, image and query slots included
    completion_tokens: int = 0
    routing_tokens: tuple[str, ...] = ()

    @property
    def plain_text(self) -> str:
        """The answer without routing tokens ("circle[DET], square[DET]" -> "circle, square")."""
        return strip_links(self.text, self.routing_tokens).strip()

    @property
    def detections(self) -> list[Detection]:
        return [i for i in self.items if isinstance(i, Detection)]

    @property
    def semantic_maps(self) -> list[SemanticMap]:
        return [i for i in self.items if isinstance(i, SemanticMap)]

    @property
    def images(self) -> list[GeneratedImage]:
        return [i for i in self.items if isinstance(i, GeneratedImage)]

    @property
    def drawable(self) -> bool:
        """Whether :meth:`draw` has something to draw (an input or a generated image)."""
        return self.image is not None or bool(self.images)

    def draw(self) -> Image.Image:
        """The input image with visual prompts, boxes, masks, keypoints and semantic maps drawn
        on it, followed left to right by any generated or edited images."""
        from visionllm2.visualize import draw_region, draw_result

        panels = []
        if self.image is not None:
            out = self.image
            for r in self.regions:
                out = draw_region(out, r)
            panels.append(draw_result(out, self.items))
        panels += [g.image.convert("RGB") for g in self.images]
        if not panels:
            raise ValueError("nothing to draw: the result has no input image and no generated image")
        if len(panels) == 1:
            return panels[0]
        canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
        x = 0
        for p in panels:
            canvas.paste(p, (x, 0))
            x += p.width
        return canvas

    def to_dict(self, *, include_images: bool = True) -> dict[str, Any]:
        """JSON-ready outputs: boxes xyxy in pixels, masks as COCO RLE, keypoints by name,
        semantic maps as one RLE per label, generated images as base64 PNG."""
        semantic = []
        for sm in self.semantic_maps:
            masks = [
                {"label": label, "mask": mask_to_rle(sm.classes == k)}
                for k, label in enumerate(sm.labels)
                if (sm.classes == k).any()
            ]
            semantic.append(
                {"labels": sm.labels, "size": [sm.classes.shape[1], sm.classes.shape[0]], "masks": masks}
            )
        images = []
        for g in self.images:
            entry: dict[str, Any] = {"family": g.family, "size": list(g.image.size)}
            if include_images:
                entry["png_base64"] = image_to_base64_png(g.image)
            images.append(entry)
        known = (Detection, SemanticMap, GeneratedImage)
        other = [
            i.to_dict() if hasattr(i, "to_dict") else repr(i) for i in self.items if not isinstance(i, known)
        ]
        out = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "links": self.links,
            "detections": [d.to_dict() for d in self.detections],
            "semantic_maps": semantic,
            "images": images,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
        }
        if other:
            out["other"] = other
        return out

    def to_json(self, *, include_images: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(include_images=include_images), indent=indent)


# -- the predictor ------------------------------------------------------------------------------
class VisionLLM2:
    """Chat with a VisionLLM v2 model about images; get text plus typed outputs.

    >>> m = VisionLLM2.from_pretrained("tiny")
    >>> r = m.chat("photo.png", "Detect the circles and squares.")
    >>> r.text, r.detections, r.draw().save("out.png")
    >>> r2 = m.chat(None, "And which one is largest?", history=r)      # multi-turn
    >>> m.chat("photo.png", "What is this object?", point=(120, 80))   # visual prompt

    Image features are cached by content (LRU, ``feature_cache_size`` images), so later turns
    about the same image and repeated requests skip the vision tower.
    """

    def __init__(
        self,
        *,
        model: VisionLLM2Model,
        device: str | torch.device | None = None,
        generation: GenerationConfig | None = None,
        feature_cache_size: int = 8,
    ) -> None:
        if not isinstance(model, VisionLLM2Model):
            raise TypeError(f"model must be a VisionLLM2Model, got {type(model).__name__}")
        self.model = model.eval()
        if device is not None:
            self.model.to(resolve_device(device))
        self.generation = generation or GenerationConfig(max_new_tokens=128)
        self.feature_cache_size = feature_cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0
        proc = model.processor
        self.routing_tokens = tuple(f.token for f in proc.families.values())
        self._end_ids = {proc.tokenizer.eos_token_id}
        end_token = proc.template.assistant_suffix.strip()
        if end_token:
            end_id = proc.tokenizer.convert_tokens_to_ids(end_token)
            if end_id is not None and end_id != proc.tokenizer.unk_token_id:
                self._end_ids.add(end_id)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, device: str | torch.device = "auto", **kwargs: Any
    ) -> VisionLLM2:
        """Load a bundled model by name (``"tiny"``) or a folder written by ``save_pretrained``.
        ``device="auto"`` picks CUDA when available."""
        key = str(name_or_path)
        if key not in BUNDLED and not Path(key).exists():
            raise FileNotFoundError(
                f"unknown model {key!r}: not a bundled model name ({', '.join(sorted(BUNDLED))}) "
                "and no such folder"
            )
        dev = resolve_device(device)
        return cls(model=from_pretrained(name_or_path, device=dev), **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        decoders = list(self.model.decoders)
        return f"VisionLLM2({n / 1e6:.1f}M parameters, device={self.device}, decoders={decoders})"

    # -- building samples ----------------------------------------------------------------
    def build_sample(
        self,
        image: ImageLike | None,
        prompt: str,
        *,
        regions: Sequence[RegionPrompt] = (),
        history: ChatResult | None = None,
        system: str | None = None,
    ) -> tuple[Sample, list[Turn], Image.Image | None, list[RegionPrompt]]:
        """(model sample, raw conversation, image, all regions) for one question.

        The model sample replays ``history`` with its routing tokens removed (see
        :func:`strip_links`); the raw conversation keeps them for the caller.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        img = None if image is None else load_image(image)
        turns: list[Turn] = []
        all_regions: list[RegionPrompt] = []
        if history is not None:
            if not isinstance(history, ChatResult):
                raise TypeError(
                    f"history must be the ChatResult of the previous turn, got {type(history).__name__}"
                )
            if img is not None and history.image is not None and image_key(img) != image_key(history.image):
                raise ValueError(
                    "a conversation is about one image: pass image=None to continue the history, "
                    "or start a new chat (history=None) for a new image"
                )
            img = history.image if history.image is not None else img
            turns = list(history.conversation)
            all_regions = list(history.regions)
        elif system:
            turns.append(Turn("system", system))
        regions = list(regions)
        if regions and img is None:
            raise ValueError("a region prompt (point/box/scribble/mask) needs an image to point into")
        if regions and self.model.region_encoder is None:
            raise ValueError(
                "this model has no region encoder (config.region.enabled is false); drop the region"
            )
        for r in regions:
            if r.kind == "mask" and np.asarray(r.data).shape != (img.height, img.width):
                raise ValueError(
                    f"mask prompt is {np.asarray(r.data).shape} but the image is "
                    f"(h, w) = {(img.height, img.width)}"
                )
        n_in_text = prompt.count(REGION_TOKEN)
        if n_in_text and n_in_text != len(regions):
            raise ValueError(
                f"the prompt has {n_in_text} {REGION_TOKEN} token(s) but {len(regions)} region "
                "prompt(s) were given"
            )
        text = place_regions(prompt, len(regions))
        has_image_token = any(IMAGE_TOKEN in t.content for t in turns) or IMAGE_TOKEN in text
        if img is not None and not has_image_token:
            text = f"{IMAGE_TOKEN}\n{text}"  # the first user turn carries the image
        turns.append(Turn("user", text))
        all_regions += regions
        replay = [Turn(t.role, strip_links(t.content, self.routing_tokens)) for t in turns[:-1]] + [turns[-1]]
        sample = Sample(images=[img] if img is not None else [], conversation=replay, regions=all_regions)
        return sample, turns, img, all_regions

    # -- running --------------------------------------------------------------------------
    def chat(
        self,
        image: ImageLike | None | Sequence[ImageLike | None] = None,
        prompt: str | Sequence[str] | None = None,
        *,
        point: Any = None,
        box: Any = None,
        scribble: Any = None,
        mask: Any = None,
        history: ChatResult | Sequence[ChatResult | None] | None = None,
        system: str | None = None,
        **generation: Any,
    ) -> ChatResult | list[ChatResult]:
        """Ask about an image (or about nothing: ``image=None`` for text-only, generation...).

        Region prompts: ``point=(x, y)``, ``box=(x0, y0, x1, y1)``, ``scribble=[(x, y), ...]``,
        ``mask=(H, W) bool array`` in pixels of the image. Each becomes one ``<region>``: put
        the token in the prompt yourself, or let :func:`place_regions` rewrite it ("What is
        this object?" -> "What is <region>?"; without such a phrase the prompt is prefixed
        with "Regarding <region>: ").

        Batches: pass a list of images and/or a list of prompts (one of them may be a single
        value, shared by all); ``point``/``box``/``scribble``/``mask``/``history`` are then
        lists with one entry (or ``None``) per sample. All samples run in one generate call.

        ``generation`` overrides :class:`GenerationConfig` fields (``max_new_tokens``,
        ``do_sample``, ``temperature``, ``top_p``, ``stop_strings``, ``seed``...).
        """
        if prompt is None:
            raise ValueError("chat needs a prompt, e.g. m.chat(image, 'Describe the image.')")
        batched = isinstance(prompt, (list, tuple)) or isinstance(image, (list, tuple))
        if not batched:
            regions = region_prompts(point=point, box=box, scribble=scribble, mask=mask)
            sample, turns, img, regs = self.build_sample(
                image, prompt, regions=regions, history=history, system=system
            )
            return self.run([sample], generation, meta=[(turns, img, regs)])[0]
        n = max(len(x) for x in (image, prompt) if isinstance(x, (list, tuple)))
        images = _per_sample(image, n, "image", broadcast=True)
        prompts = _per_sample(prompt, n, "prompt", broadcast=True)
        per = {
            k: _per_sample(v, n, k)
            for k, v in dict(point=point, box=box, scribble=scribble, mask=mask).items()
        }
        histories = _per_sample(history, n, "history")
        samples, meta = [], []
        for i in range(n):
            regions = region_prompts(**{k: v[i] for k, v in per.items()})
            sample, turns, img, regs = self.build_sample(
                images[i], prompts[i], regions=regions, history=histories[i], system=system
            )
            samples.append(sample)
            meta.append((turns, img, regs))
        return self.run(samples, generation, meta=meta)

    def run(
        self,
        samples: list[Sample],
        generation: GenerationConfig | dict[str, Any] | None = None,
        *,
        meta: list[tuple[list[Turn], Image.Image | None, list[RegionPrompt]]] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[ChatResult]:
        """Generate for ready-made samples (last turn the user's) in one batch. ``meta`` gives
        each result's raw conversation, image and regions (defaults: the sample's own);
        ``on_token(sample_index, token_id)`` sees every generated token as it comes."""
        cfg = self._generation(generation)
        batch = self.model.processor(samples, add_generation_prompt=True).to(self.device, self.dtype)
        features = self._vision_features(samples, batch)
        results = generate(self.model, batch, cfg, vision_features=features, on_token=on_token)
        prompt_tokens = batch.attention_mask.sum(1).tolist()
        out = []
        for i, (s, r) in enumerate(zip(samples, results)):
            turns, img, regs = (
                meta[i] if meta is not None else (s.conversation, (s.images or [None])[0], s.regions)
            )
            out.append(
                ChatResult(
                    text=r.text,
                    items=r.items,
                    links=r.links,
                    image=img,
                    conversation=[*turns, Turn("assistant", r.text)],
                    regions=list(regs),
                    finish_reason=self._finish_reason(r, cfg),
                    prompt_tokens=int(prompt_tokens[i]),
                    completion_tokens=len(r.token_ids),
                    routing_tokens=self.routing_tokens,
                )
            )
        return out

    def _generation(self, generation: GenerationConfig | dict[str, Any] | None) -> GenerationConfig:
        if isinstance(generation, GenerationConfig):
            return generation
        if not generation:
            return self.generation
        known = set(GenerationConfig.__dataclass_fields__)
        unknown = sorted(set(generation) - known)
        if unknown:
            raise ValueError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        merged = {**self.generation.__dict__, **generation}
        merged["stop_strings"] = tuple(
            [merged["stop_strings"]] if isinstance(merged["stop_strings"], str) else merged["stop_strings"]
        )
        return GenerationConfig(**merged)

    def _finish_reason(self, r: Result, cfg: GenerationConfig) -> str:
        if r.token_ids and r.token_ids[-1] in self._end_ids:
            return "stop"
        if len(r.token_ids) >= cfg.max_new_tokens:
            full = self.model.processor.decode(r.token_ids)
            return "stop" if any(full.endswith(s) for s in cfg.stop_strings) else "length"
        return "stop"

    @torch.no_grad()
    def _vision_features(self, samples: list[Sample], batch: Any) -> torch.Tensor | None:
        """(I, N, Dv) vision-tower output for the batch's images, from the cache where possible."""
        if batch.pixel_values is None or self.feature_cache_size <= 0:
            return None
        keys = [image_key(im) for s in samples for im in s.images]
        feats: list[torch.Tensor | None] = []
        with self._lock:
            for k in keys:
                f = self._cache.get(k)
                if f is not None:
                    self._cache.move_to_end(k)
                feats.append(f)
        missing: dict[str, int] = {}  # key -> first batch index (duplicates are encoded once)
        for i, (k, f) in enumerate(zip(keys, feats)):
            if f is None:
                missing.setdefault(k, i)
        if missing:
            new = self.model.vision(batch.pixel_values[list(missing.values())])  # (M, N, Dv)
            fresh = dict(zip(missing, new))
            feats = [fresh.get(k, f) for k, f in zip(keys, feats)]
            with self._lock:
                for k, f in fresh.items():
                    self._cache[k] = f
                while len(self._cache) > self.feature_cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            self.cache_misses += len(missing)
            self.cache_hits += len(keys) - len(missing)
        return torch.stack(feats)  # (I, N, Dv)


def _per_sample(value: Any, n: int, name: str, *, broadcast: bool = False) -> list[Any]:
    if isinstance(value, (list, tuple)) and not (name in ("point", "box") and _is_coords(value)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the batch has {n} samples")
        return list(value)
    if value is None or broadcast:
        return [value] * n
    raise ValueError(f"in a batched call, {name} must be a list with one entry (or None) per sample")


def _is_coords(value: Sequence[Any]) -> bool:
    return len(value) in (2, 4) and all(isinstance(v, (int, float, np.number)) for v in value)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
