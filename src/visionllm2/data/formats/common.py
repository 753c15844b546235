"""Shared plumbing of the dataset formats: atomic writes, JSON/JSONL reading, image opening, and
errors that name the file, the record and the field."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from visionllm2.config import atomic_write_bytes, atomic_write_text


class FormatError(ValueError):
    """A dataset file is malformed. The message starts with where: file, record, field."""

    def __init__(
        self, path: str | os.PathLike, message: str, *, record: str | None = None, field: str | None = None
    ):
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.record, self.field = str(path), record, field


# -- atomic writes (atomic_write_bytes / atomic_write_text live in visionllm2.config) ----------


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def atomic_save_image(path: str | os.PathLike, image: Image.Image | np.ndarray) -> None:
    """Save a PIL image or an array (format from the suffix) atomically."""
    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path}; use .png or .jpg")
    img.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


# -- reading -------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(path, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """One JSON value per non-empty line; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FormatError(path, f"not valid JSON: {e.msg}", record=f"line {lineno}") from e
    return out


def open_image(path: str | os.PathLike, *, source: str | os.PathLike, record: str, field: str) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file is a :class:`FormatError` about the
    record of ``source`` that named it."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(source, f"image file {path} does not exist", record=record, field=field)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise FormatError(source, f"cannot read image {path}: {e}", record=record, field=field) from e


def record_name(index: int, record: Any, id_key: str = "id", *, section: str | None = None) -> str:
    """``"#3 (id=42)"`` or, with ``section``, ``"annotations[3] (id=42)"``: the position in the
    file and, when present, the record's own id."""
    name = f"{section}[{index}]" if section else f"#{index}"
    if isinstance(record, dict) and id_key in record:
        return f"{name} ({id_key}={record[id_key]!r})"
    return name


_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    bool: "a bool",
}


def require(
    record: Any,
    key: str,
    kind: type | tuple[type, ...],
    *,
    path: str | os.PathLike,
    where: str,
    optional: bool = False,
) -> Any:
    """``record[key]`` checked to be of ``kind``; else a :class:`FormatError` naming file,
    record and field. Ints count as floats; bools never count as numbers."""
    if not isinstance(record, dict):
        raise FormatError(path, f"expected a JSON object, got {type(record).__name__}", record=where)
    if key not in record or record[key] is None:
        if optional:
            return None
        raise FormatError(path, "missing", record=where, field=key)
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(
            _TYPE_NAMES.get(k, k.__name__) for k in kinds if not (k is int and float in kinds)
        )
        raise FormatError(path, f"expected {names}, got {value!r}", record=where, field=key)
    return value


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
