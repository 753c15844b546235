"""Image-text pairs as JSONL: captions (text-to-image / captioning) and InstructPix2Pix-style edits.

Captions follow the Hugging Face ``imagefolder`` ``metadata.jsonl`` schema that diffusers'
text-to-image scripts read: ``{"file_name": "0001.png", "text": "a red circle ..."}``
(``image`` / ``caption`` are accepted as aliases).

Edits follow the InstructPix2Pix dataset columns (``timbrooks/instructpix2pix-clip-filtered``),
one record per line with image paths: ``{"original_image": "a.png", "edit_prompt": "make it
blue", "edited_image": "b.png", "original_prompt": "...", "edited_prompt": "..."}``
(``input_image`` is accepted for ``original_image``, as in ``fusing/instructpix2pix-1000-samples``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from visionllm2.data import builders as B
from visionllm2.data.formats.common import FormatError, atomic_write_jsonl, open_image, read_jsonl, require
from visionllm2.data.sample import Sample
from visionllm2.data.templates import Phrasing


def _field(rec: Any, names: tuple[str, ...], *, path: Path, where: str) -> tuple[str, str]:
    """(field name, non-empty string value) of the first of ``names`` present."""
    if not isinstance(rec, dict):
        raise FormatError(path, f"expected a JSON object, got {type(rec).__name__}", record=where)
    for n in names:
        if n in rec:
            v = require(rec, n, str, path=path, where=where)
            if not v.strip():
                raise FormatError(path, "empty", record=where, field=n)
            return n, v
    raise FormatError(path, f"missing (one of {list(names)})", record=where, field=names[0])


class CaptionPairs:
    """Caption JSONL as ``gen`` (caption -> image) or ``caption`` (image -> caption) Samples."""

    def __init__(
        self,
        *,
        jsonl_file: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        task: str = "gen",
        seed: int = 0,
        phrasing: Phrasing = "train",
    ) -> None:
        if task not in ("gen", "caption"):
            raise ValueError(f"caption pairs give 'gen' or 'caption' samples, got {task!r}")
        self.path = Path(jsonl_file)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.task, self.seed, self.phrasing = task, seed, phrasing
        self.items: list[tuple[str, str, str, str]] = []  # (where, image field, image path, text)
        for i, rec in enumerate(read_jsonl(self.path)):
            where = f"line {i + 1}"
            fname, image = _field(rec, ("file_name", "image"), path=self.path, where=where)
            _, text = _field(rec, ("text", "caption"), path=self.path, where=where)
            self.items.append((where, fname, image, text.strip()))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        where, fname, path, text = self.items[index]
        image = open_image(self.image_root / path, source=self.path, record=where, field=fname)
        rng = np.random.default_rng([self.seed, index])
        meta = {"source": "pairs", "file": str(self.path), "record": where}
        if self.task == "gen":
            return B.generation_sample(text, image, rng, phrasing=self.phrasing, meta=meta)
        return B.caption_sample(image, text, rng, phrasing=self.phrasing, meta=meta)


class EditPairs:
    """InstructPix2Pix-style edit JSONL as ``edit`` Samples (source + instruction -> target)."""

    def __init__(
        self,
        *,
        jsonl_file: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        seed: int = 0,
        phrasing: Phrasing = "train",
    ) -> None:
        self.path = Path(jsonl_file)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.seed, self.phrasing = seed, phrasing
        self.items: list[tuple[str, tuple[str, str], str, tuple[str, str]]] = []
        for i, rec in enumerate(read_jsonl(self.path)):
            where = f"line {i + 1}"
            src = _field(rec, ("original_image", "input_image"), path=self.path, where=where)
            _, prompt = _field(rec, ("edit_prompt",), path=self.path, where=where)
            dst = _field(rec, ("edited_image",), path=self.path, where=where)
            self.items.append((where, src, prompt.strip(), dst))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        where, (sfield, spath), prompt, (dfield, dpath) = self.items[index]
        source = open_image(self.image_root / spath, source=self.path, record=where, field=sfield)
        target = open_image(self.image_root / dpath, source=self.path, record=where, field=dfield)
        if source.size != target.size:
            raise FormatError(
                self.path,
                f"edited image is {target.size} but the original is {source.size}",
                record=where,
                field=dfield,
            )
        rng = np.random.default_rng([self.seed, index])
        meta = {"source": "pairs", "file": str(self.path), "record": where}
        return B.edit_sample(source, prompt, target, rng, phrasing=self.phrasing, meta=meta)


def caption_record(file_name: str, text: str) -> dict[str, Any]:
    return {"file_name": file_name, "text": text}


def edit_record(
    original_image: str,
    edit_prompt: str,
    edited_image: str,
    *,
    original_prompt: str = "",
    edited_prompt: str = "",
) -> dict[str, Any]:
    return {
        "original_prompt": original_prompt,
        "original_image": original_image,
        "edit_prompt": edit_prompt,
        "edited_prompt": edited_prompt,
        "edited_image": edited_image,
    }


def write_pairs(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    atomic_write_jsonl(path, records)
