"""ADE20K (SceneParsing, ADEChallengeData2016 layout): images + semantic PNGs -> semantic-seg Samples.

Layout: ``images/<split>/<name>.jpg`` and ``annotations/<split>/<name>.png``, where the PNG is a
single-channel map of class indices (0 = "other", not a class; k = the k-th class of the class
list). The class list is ``objectInfo150.txt`` (tab-separated ``Idx Ratio Train Val Name``,
synonyms in Name separated by ", ") or CSAIL's ``object150_info.csv`` (comma-separated
``Idx,Ratio,Train,Val,Stuff,Name``, synonyms separated by ";"); the first synonym names the class.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from visionllm2.config import atomic_write_text
from visionllm2.data import builders as B
from visionllm2.data.formats.common import FormatError, atomic_save_image, open_image
from visionllm2.data.sample import Sample
from visionllm2.data.templates import Phrasing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names in index order (index 1 first) from objectInfo150.txt or object150_info.csv."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such class list")
    text = path.read_text(encoding="utf-8")
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise FormatError(path, "empty class list")
    header = [h.strip() for h in rows[0]]
    if "Idx" not in header or "Name" not in header:
        raise FormatError(
            path, f"header must name the 'Idx' and 'Name' columns, got {header}", record="line 1"
        )
    i_idx, i_name = header.index("Idx"), header.index("Name")
    names: list[str] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(i_idx, i_name):
            raise FormatError(
                path, f"expected {len(header)} columns, got {len(row)}", record=f"line {lineno}"
            )
        try:
            idx = int(row[i_idx])
        except ValueError as e:
            raise FormatError(
                path, f"not an integer: {row[i_idx]!r}", record=f"line {lineno}", field="Idx"
            ) from e
        if idx != len(names) + 1:
            raise FormatError(
                path, f"expected index {len(names) + 1}, got {idx}", record=f"line {lineno}", field="Idx"
            )
        name = row[i_name].replace(";", ",").split(",")[0].strip()
        if not name:
            raise FormatError(path, "empty class name", record=f"line {lineno}", field="Name")
        names.append(name)
    return names


def write_class_file(
    path: str | os.PathLike, names: list[str], pixel_ratio: list[float] | None = None
) -> None:
    """Write an objectInfo150.txt-style list (tab-separated Idx Ratio Train Val Name)."""
    ratios = pixel_ratio or [0.0] * len(names)
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    lines += [f"{i}\t{r:.4f}\t0\t0\t{n}" for i, (n, r) in enumerate(zip(names, ratios, strict=True), start=1)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_semantic_png(path: str | os.PathLike, class_map: np.ndarray) -> None:
    """(H, W) class indices (0 = other) -> single-channel 8-bit PNG."""
    m = np.asarray(class_map)
    if m.ndim != 2 or m.min(initial=0) < 0 or m.max(initial=0) > 255:
        raise ValueError(f"a semantic map must be (H, W) with values 0..255, got shape {m.shape}")
    atomic_save_image(path, Image.fromarray(m.astype(np.uint8), mode="L"))


def read_semantic_png(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Read a class-index PNG as (H, W) int; values above ``num_classes`` are an error."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise FormatError(path, f"a semantic map must be single-channel (L or P), got mode {im.mode}")
            m = np.asarray(im).astype(np.int32)
    except (UnidentifiedImageError, OSError) as e:
        raise FormatError(path, f"cannot read PNG: {e}") from e
    top = int(m.max(initial=0))
    if top > num_classes:
        raise FormatError(path, f"class index {top} but the class list has only {num_classes} classes")
    return m


class Ade20kDataset:
    """Semantic segmentation Samples from an ADE20K-style folder pair."""

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike,
        annotation_dir: str | os.PathLike,
        class_file: str | os.PathLike,
        seed: int = 0,
        phrasing: Phrasing = "train",
        max_names: int = 8,
    ) -> None:
        self.image_dir, self.annotation_dir = Path(image_dir), Path(annotation_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: no such image folder")
        self.classes = read_class_file(class_file)
        self.files = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in self.files:
            if not (self.annotation_dir / f"{p.stem}.png").is_file():
                raise FormatError(
                    p, f"no annotation {self.annotation_dir / (p.stem + '.png')} for this image"
                )
        self.seed, self.phrasing, self.max_names = seed, phrasing, max_names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        path = self.files[index]
        ann_path = self.annotation_dir / f"{path.stem}.png"
        image = open_image(path, source=path, record=path.name, field="image")
        m = read_semantic_png(ann_path, len(self.classes))
        if m.shape != (image.height, image.width):
            raise FormatError(ann_path, f"map is {m.shape[::-1]} (w, h) but the image is {image.size}")
        present = {self.classes[v - 1] for v in np.unique(m) if v > 0}
        rng = np.random.default_rng([self.seed, index])
        names = B.sample_class_names(present, self.classes, rng, max_names=self.max_names)
        classes = [(n, m == self.classes.index(n) + 1) for n in names]
        meta = {"source": "ade20k", "file": str(path)}
        return B.semantic_sample(image, classes, rng, phrasing=self.phrasing, meta=meta)
