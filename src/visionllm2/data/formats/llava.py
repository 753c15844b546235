"""LLaVA conversation JSON (LLaVA-Instruct / LLaVA-Pretrain schema) <-> Samples.

Each record: ``{"id": ..., "image": "coco/train2017/x.jpg", "conversations": [{"from": "human",
"value": "<image>\\nWhat ..."}, {"from": "gpt", "value": "..."}, ...]}``. ``image`` is optional
(text-only records) and may be a list (multi-image variants); an optional first ``system`` turn
is kept. If a record has an image but no ``<image>`` in its text, ``<image>\\n`` is put at the
start of the first human turn (what LLaVA's preprocessing does). Routing tokens in the text get
no targets (``None``): LLaVA data carries none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN, ROUTING_TOKENS
from visionllm2.data.formats.common import (
    FormatError,
    atomic_write_json,
    open_image,
    read_json,
    record_name,
    require,
)
from visionllm2.data.sample import Sample, Turn

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ROUTING_RE = re.compile("|".join(re.escape(t) for t in ROUTING_TOKENS.values()))


class LlavaDataset:
    """LLaVA JSON records as ``chat`` Samples (images opened lazily)."""

    def __init__(self, *, json_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        self.path = Path(json_file)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        data = read_json(self.path)
        if not isinstance(data, list):
            raise FormatError(self.path, f"expected a JSON list of records, got {type(data).__name__}")
        self.records: list[tuple[str, list[str], list[Turn], Any]] = []
        for i, rec in enumerate(data):
            where = record_name(i, rec)
            images = require(rec, "image", (str, list), path=self.path, where=where, optional=True)
            images = [] if images is None else [images] if isinstance(images, str) else images
            if not all(isinstance(p, str) and p for p in images):
                raise FormatError(
                    self.path, "image paths must be non-empty strings", record=where, field="image"
                )
            convs = require(rec, "conversations", list, path=self.path, where=where)
            turns = []
            for k, msg in enumerate(convs):
                mwhere = f"{where} conversations[{k}]"
                role = require(msg, "from", str, path=self.path, where=mwhere)
                if role not in _ROLES:
                    raise FormatError(
                        self.path,
                        f"unknown speaker {role!r}; use human, gpt or system",
                        record=mwhere,
                        field="from",
                    )
                turns.append(Turn(_ROLES[role], require(msg, "value", str, path=self.path, where=mwhere)))
            self._check_turns(turns, where)
            n_tokens = sum(t.content.count(IMAGE_TOKEN) for t in turns)
            if images and n_tokens == 0:
                first_user = next(j for j, t in enumerate(turns) if t.role == "user")
                turns[first_user] = Turn("user", f"{IMAGE_TOKEN}\n{turns[first_user].content}")
            elif n_tokens != len(images):
                raise FormatError(
                    self.path,
                    f"{n_tokens} {IMAGE_TOKEN} token(s) in the text but {len(images)} image(s)",
                    record=where,
                    field="conversations",
                )
            if any(REGION_TOKEN in t.content for t in turns):
                raise FormatError(
                    self.path,
                    f"{REGION_TOKEN} needs a region prompt, which LLaVA JSON cannot hold",
                    record=where,
                    field="conversations",
                )
            self.records.append((where, images, turns, rec.get("id")))

    def _check_turns(self, turns: list[Turn], where: str) -> None:
        body = turns[1:] if turns and turns[0].role == "system" else turns
        if not body:
            raise FormatError(
                self.path, "a conversation needs at least one turn", record=where, field="conversations"
            )
        for k, t in enumerate(body):
            expected = "user" if k % 2 == 0 else "assistant"
            if t.role != expected:
                raise FormatError(
                    self.path,
                    f"turn {k} is from {t.role!r} but turns must alternate human/gpt starting with human",
                    record=where,
                    field="conversations",
                )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        where, paths, turns, rid = self.records[index]
        images = [
            open_image(self.image_root / p, source=self.path, record=where, field="image") for p in paths
        ]
        n_links = sum(len(_ROUTING_RE.findall(t.content)) for t in turns)
        return Sample(
            images,
            list(turns),
            targets=[None] * n_links,
            task="chat",
            meta={"source": "llava", "file": str(self.path), "id": rid},
        )


def sample_to_llava(sample: Sample, *, record_id: str, image: str | list[str] | None) -> dict[str, Any]:
    """A text-answer Sample as a LLaVA record; ``image`` is the path(s) to write for its images."""
    if any(t is not None for t in sample.targets) or sample.regions:
        raise ValueError(
            f"sample {record_id} has link targets or region prompts, which LLaVA JSON cannot hold; "
            "write it as COCO / RefCOCO / pairs instead"
        )
    n = len(sample.images)
    paths = [] if image is None else [image] if isinstance(image, str) else list(image)
    if len(paths) != n:
        raise ValueError(f"sample {record_id} has {n} image(s) but {len(paths)} path(s) were given")
    back = {"user": "human", "assistant": "gpt", "system": "system"}
    rec: dict[str, Any] = {"id": record_id}
    if paths:
        rec["image"] = paths[0] if n == 1 else paths
    rec["conversations"] = [{"from": back[t.role], "value": t.content} for t in sample.conversation]
    return rec


def write_llava(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    atomic_write_json(path, records, indent=1)
