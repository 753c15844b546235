"""RefCOCO / RefCOCO+ / RefCOCOg: referring expressions -> grounding or referring-segmentation Samples.

The refer toolkit ships ``refs(unc).p`` (a pickle) plus ``instances.json`` (COCO format). Pickles
can run code when loaded, so they are never read here: convert once with the refer toolkit
(``json.dump(pickle.load(open("refs(unc).p", "rb")), open("refs.json", "w"))``) — many tools
ship this ``refs.json`` already. Its records keep the pickle's schema exactly::

    {"ref_id": 0, "ann_id": 1719310, "image_id": 581857, "category_id": 1, "split": "train",
     "sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_1.jpg",
     "sentences": [{"sent_id": 0, "sent": "the lady with the blue shirt", "raw": "THE lady ...",
                    "tokens": ["the", "lady", ...]}, ...]}

``file_name`` there has the annotation's suffix; the image file is looked up by ``image_id``
in ``instances.json``. One sample per (ref, sentence) of the chosen split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from visionllm2.data import builders as B
from visionllm2.data.formats.coco import CocoFile
from visionllm2.data.formats.common import (
    FormatError,
    atomic_write_json,
    open_image,
    read_json,
    record_name,
    require,
)
from visionllm2.data.sample import Sample
from visionllm2.data.templates import Phrasing


class RefCocoDataset:
    """Referring expressions of one split as ``grd`` (box) or ``ref_seg`` (mask) Samples."""

    def __init__(
        self,
        *,
        refs_file: str | os.PathLike,
        instances_file: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str | None = None,
        task: str = "grd",
        seed: int = 0,
        phrasing: Phrasing = "train",
    ) -> None:
        if task not in ("grd", "ref_seg"):
            raise ValueError(f"RefCOCO task must be 'grd' or 'ref_seg', got {task!r}")
        refs_path = Path(refs_file)
        if refs_path.suffix == ".p":
            raise ValueError(
                f"{refs_path} is a pickle, which is never loaded (it can run code); convert it to refs.json "
                "as described in visionllm2.data.formats.refcoco"
            )
        self.refs_path = refs_path
        self.coco = CocoFile(instances_file)
        self.image_root = Path(image_root)
        self.task, self.seed, self.phrasing = task, seed, phrasing
        anns = {a.id: a for lst in self.coco.annotations.values() for a in lst}
        refs = read_json(refs_path)
        if not isinstance(refs, list):
            raise FormatError(refs_path, f"expected a JSON list of refs, got {type(refs).__name__}")
        self.items: list[tuple[int, str, str]] = []  # (ann_id, sentence, where)
        self.splits: set[str] = set()
        for i, ref in enumerate(refs):
            where = record_name(i, ref, "ref_id")
            ann_id = require(ref, "ann_id", int, path=refs_path, where=where)
            image_id = require(ref, "image_id", int, path=refs_path, where=where)
            require(ref, "category_id", int, path=refs_path, where=where)
            ref_split = require(ref, "split", str, path=refs_path, where=where)
            sentences = require(ref, "sentences", list, path=refs_path, where=where)
            if ann_id not in anns:
                raise FormatError(
                    refs_path, f"ann_id {ann_id} is not in {self.coco.path}", record=where, field="ann_id"
                )
            if anns[ann_id].image_id != image_id:
                raise FormatError(
                    refs_path,
                    f"image_id {image_id} differs from annotation {ann_id}'s image {anns[ann_id].image_id}",
                    record=where,
                    field="image_id",
                )
            if not sentences:
                raise FormatError(
                    refs_path, "a ref needs at least one sentence", record=where, field="sentences"
                )
            self.splits.add(ref_split)
            if split is not None and ref_split != split:
                continue
            for k, sent in enumerate(sentences):
                text = require(sent, "sent", str, path=refs_path, where=f"{where} sentences[{k}]")
                if not text.strip():
                    raise FormatError(
                        refs_path, "empty sentence", record=f"{where} sentences[{k}]", field="sent"
                    )
                self.items.append((ann_id, text.strip(), where))
        if split is not None and split not in self.splits:
            raise ValueError(f"{refs_path} has no split {split!r}; it has {sorted(self.splits)}")
        self._anns = anns

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        ann_id, sentence, where = self.items[index]
        ann = self._anns[ann_id]
        img = self.coco.images[ann.image_id]
        image = open_image(
            self.image_root / img.file_name,
            source=self.coco.path,
            record=f"image id {img.id}",
            field="file_name",
        )
        x, y, w, h = ann.bbox
        mask = self.coco.mask(ann) if self.task == "ref_seg" else None
        if self.task == "ref_seg" and mask is None:
            raise FormatError(
                self.coco.path, "referring segmentation needs a mask", record=ann.where, field="segmentation"
            )
        obj = B.ObjectAnn(
            self.coco.category_name(ann.category_id), np.array([x, y, x + w, y + h], np.float32), mask
        )
        rng = np.random.default_rng([self.seed, index])
        meta = {"source": "refcoco", "file": str(self.refs_path), "ref": where, "image_id": img.id}
        return B.grounding_sample(
            image, sentence, obj, rng, phrasing=self.phrasing, segment=self.task == "ref_seg", meta=meta
        )


def make_ref(
    *,
    ref_id: int,
    ann_id: int,
    image_id: int,
    category_id: int,
    split: str,
    sentences: list[str],
    first_sent_id: int,
    file_name: str,
) -> dict[str, Any]:
    """One ref record in the refer toolkit's schema (``sent`` lower-cased, ``tokens`` split)."""
    sents = [
        {"sent_id": first_sent_id + k, "sent": s.lower(), "raw": s, "tokens": s.lower().split()}
        for k, s in enumerate(sentences)
    ]
    stem, ext = os.path.splitext(file_name)
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "split": split,
        "sent_ids": [s["sent_id"] for s in sents],
        "file_name": f"{stem}_{ann_id}{ext}",
        "sentences": sents,
    }


def write_refs(path: str | os.PathLike, refs: list[dict[str, Any]]) -> None:
    atomic_write_json(path, refs)
