"""Readers for the released text benchmarks: VQAv2, TextVQA, VizWiz, GQA, POPE, ScienceQA, MMBench, MME.

Each reader turns a benchmark, laid out on disk exactly as its authors release it, into a list of
:class:`BenchmarkItem`: a stable id, the user prompt (built with the paper's conventions), where the image
is, and the ``reference`` data that scoring and the submission writers need. Images are opened lazily
(:meth:`BenchmarkItem.load_image`), so reading VQAv2's 200k questions costs only the JSON parse.

Prompt conventions (LLaVA-1.5 / VisionLLM v2):

* every user turn starts with ``<image>\\n``;
* open-ended VQA (VQAv2, TextVQA, GQA, POPE, MME) appends :data:`SHORT_ANSWER`; VizWiz first adds
  :data:`VIZWIZ_UNANSWERABLE`;
* multiple choice (ScienceQA, MMBench) puts the hint/context first, then the question, then one line per
  option ``"A. text"``, then :data:`CHOICE_ANSWER`.

A malformed file raises :class:`BenchmarkFormatError` naming the file, the record and the field.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation.mme import MME_SUBTASKS

__all__ = [
    "SHORT_ANSWER",
    "CHOICE_ANSWER",
    "VIZWIZ_UNANSWERABLE",
    "BenchmarkFormatError",
    "BenchmarkItem",
    "short_answer_prompt",
    "choice_prompt",
    "read_vqav2",
    "read_textvqa",
    "read_vizwiz",
    "read_gqa",
    "read_pope",
    "read_scienceqa",
    "read_mmbench",
    "read_mme",
    "BENCHMARK_READERS",
    "read_benchmark",
]

SHORT_ANSWER = "Answer the question using a single word or phrase."
CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
IMAGE_TOKEN = "<image>"

# MMBench's released files number the circular copies of question i as i + k * 1e6 (k = shift).
MMBENCH_SHIFT_STRIDE = 1_000_000

_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".bmp", ".JPG", ".PNG", ".JPEG")


class BenchmarkFormatError(ValueError):
    """A benchmark file does not follow its published schema."""

    def __init__(self, path: str | Path, record: str, field: str, problem: str) -> None:
        self.path, self.record, self.field = str(path), record, field
        super().__init__(f"{path}: {record}: field {field!r}: {problem}")


@dataclass
class BenchmarkItem:
    """One question of a benchmark, ready for inference and scoring.

    ``uid`` is unique within the benchmark and stable across runs (used to resume, shard and join
    predictions). Exactly one of ``image_path`` / ``image_base64`` is set. ``reference`` holds what
    the scorer and the submission writer need (answers, ids, options, …; see each reader).
    """

    benchmark: str
    uid: str
    prompt: str
    image_path: Path | None = None
    image_base64: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    task: str = "vqa"

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_base64 is not None

    def load_image(self) -> Image.Image:
        """The question's image as RGB; a clear error if it is missing or unreadable."""
        if self.image_path is not None:
            if not self.image_path.is_file():
                raise FileNotFoundError(
                    f"{self.benchmark} item {self.uid}: image {self.image_path} not found; check --data "
                    "points at the benchmark root laid out as released (or pass image_root)"
                )
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        if self.image_base64 is not None:
            try:
                raw = base64.b64decode(self.image_base64, validate=False)
                with Image.open(io.BytesIO(raw)) as im:
                    return im.convert("RGB")
            except (binascii.Error, OSError) as e:
                raise ValueError(
                    f"{self.benchmark} item {self.uid}: cannot decode its base64 image: {e}"
                ) from e
        raise ValueError(f"{self.benchmark} item {self.uid} has no image")

    def to_sample(self) -> Sample:
        """The canonical :class:`Sample`: the image (if any) and a single user turn (the model answers)."""
        return Sample(
            images=[self.load_image()] if self.has_image else [],
            conversation=[Turn(role="user", content=self.prompt)],
            task=self.task,
            meta={**self.reference, "benchmark": self.benchmark, "uid": self.uid},
        )


# --------------------------------------------------------------------------- prompts


def short_answer_prompt(question: str, *, preamble: Sequence[str] = ()) -> str:
    """``<image>\\n{question}\\n[preamble lines\\n]Answer the question using a single word or phrase.``"""
    return "\n".join([f"{IMAGE_TOKEN}\n{question.strip()}", *preamble, SHORT_ANSWER])


def choice_prompt(
    question: str, options: Sequence[str], *, hint: str | None = None, with_image: bool = True
) -> str:
    """``<image>\\n[hint\\n]{question}\\nA. …\\nB. …\\nAnswer with the option's letter …``
    (without the ``<image>`` line for a text-only question)."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    lines = [IMAGE_TOKEN] if with_image else []
    if hint:
        lines.append(hint.strip())
    lines.append(question.strip())
    lines += [f"{letter}. {str(opt).strip()}" for letter, opt in zip(letters, options)]
    lines.append(CHOICE_ANSWER)
    return "\n".join(lines)


# --------------------------------------------------------------------------- file helpers


def _find_file(root: Path, candidates: Iterable[str], what: str) -> Path:
    tried = [root / c for c in candidates]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{what} not found under {root}; looked for: " + ", ".join(str(p.relative_to(root)) for p in tried)
    )


def _find_dir(root: Path, candidates: Iterable[str]) -> Path:
    """The first candidate folder that exists, else the first candidate (a missing image folder is
    reported when an image is loaded, so that scoring-only runs do not need the images)."""
    paths = [root / c for c in candidates]
    return next((p for p in paths if p.is_dir()), paths[0])


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(path, f"line {e.lineno}", "<json>", f"not valid JSON: {e.msg}") from e


def _load_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkFormatError(
                    path, f"line {lineno}", "<json>", f"not valid JSON: {e.msg}"
                ) from e
            if not isinstance(rec, dict):
                raise BenchmarkFormatError(path, f"line {lineno}", "<record>", "expected a JSON object")
            records.append((lineno, rec))
    return records


def _get(
    rec: Any, key: str, types: type | tuple[type, ...], path: Path, where: str, *, optional: bool = False
) -> Any:
    """``rec[key]`` checked against ``types``; a :class:`BenchmarkFormatError` names file, record, field."""
    if not isinstance(rec, dict):
        raise BenchmarkFormatError(
            path, where, "<record>", f"expected a JSON object, got {type(rec).__name__}"
        )
    if key not in rec or rec[key] is None:
        if optional:
            return None
        raise BenchmarkFormatError(path, where, key, "missing")
    value = rec[key]
    # bool is an int subclass; an id or count given as true/false is still malformed.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        names = "/".join(t.__name__ for t in _tuple(types))
        raise BenchmarkFormatError(
            path, where, key, f"expected {names}, got {type(value).__name__} {value!r}"
        )
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _answer_strings(rec: dict, path: Path, where: str, *, key: str = "answers") -> list[str] | None:
    """VQA-style answers: a list of strings (TextVQA) or of ``{"answer": str, ...}`` (VQAv2, VizWiz)."""
    raw = _get(rec, key, list, path, where, optional=True)
    if raw is None:
        return None
    out = []
    for j, a in enumerate(raw):
        if isinstance(a, str):
            out.append(a)
        elif isinstance(a, dict):
            out.append(_get(a, "answer", str, path, f"{where}, {key}[{j}]"))
        else:
            raise BenchmarkFormatError(path, where, f"{key}[{j}]", f"expected a string or object, got {a!r}")
    if not out:
        raise BenchmarkFormatError(path, where, key, "empty answer list")
    return out


def _take(seq: list, limit: int | None) -> list:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return seq if limit is None else seq[:limit]


# --------------------------------------------------------------------------- VQAv2


def read_vqav2(
    root: str | Path,
    *,
    split: str = "val2014",
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> list[BenchmarkItem]:
    """VQAv2 as released: ``v2_OpenEnded_mscoco_{split}_questions.json`` and (not for test splits)
    ``v2_mscoco_{split}_annotations.json`` in ``root``; images ``{folder}/COCO_{folder}_{id:012d}.jpg``
    where ``folder`` is the questions' ``data_subtype`` (``test-dev2015`` uses ``test2015``).

    ``reference``: ``question_id``, ``image_id``, ``answers`` (ten strings, or ``None`` on test),
    ``answer_type``, ``question_type``.
    """
    root = Path(root)
    qpath = _find_file(
        root,
        [
            f"v2_OpenEnded_mscoco_{split}_questions.json",
            f"questions/v2_OpenEnded_mscoco_{split}_questions.json",
        ],
        f"VQAv2 {split} questions",
    )
    qdata = _load_json(qpath)
    questions = _get(qdata, "questions", list, qpath, "top level")
    subtype = _get(qdata, "data_subtype", str, qpath, "top level", optional=True) or split
    folder = "test2015" if subtype.startswith("test") else subtype
    img_dir = Path(image_root) if image_root is not None else _find_dir(root, [folder, f"images/{folder}"])

    annotations: dict[int, dict] | None = None
    apath = next(
        (
            p
            for p in (
                root / f"v2_mscoco_{split}_annotations.json",
                root / f"annotations/v2_mscoco_{split}_annotations.json",
            )
            if p.is_file()
        ),
        None,
    )
    if apath is not None:
        adata = _load_json(apath)
        annotations = {}
        for i, a in enumerate(_get(adata, "annotations", list, apath, "top level")):
            annotations[_get(a, "question_id", int, apath, f"annotations[{i}]")] = a

    items = []
    for i, q in enumerate(_take(questions, limit)):
        where = f"questions[{i}]"
        qid = _get(q, "question_id", int, qpath, where)
        image_id = _get(q, "image_id", int, qpath, where)
        text = _get(q, "question", str, qpath, where)
        ref: dict[str, Any] = {"question_id": qid, "image_id": image_id, "question": text, "answers": None}
        if annotations is not None:
            if qid not in annotations:
                raise BenchmarkFormatError(
                    apath, f"question_id {qid}", "annotations", "no annotation for this question"
                )
            a = annotations[qid]
            awhere = f"annotation of question_id {qid}"
            ref["answers"] = _answer_strings(a, apath, awhere)
            ref["answer_type"] = _get(a, "answer_type", str, apath, awhere, optional=True)
            ref["question_type"] = _get(a, "question_type", str, apath, awhere, optional=True)
        items.append(
            BenchmarkItem(
                benchmark="vqav2",
                uid=str(qid),
                prompt=short_answer_prompt(text),
                image_path=img_dir / f"COCO_{folder}_{image_id:012d}.jpg",
                reference=ref,
            )
        )
    return items


# --------------------------------------------------------------------------- TextVQA


def read_textvqa(
    root: str | Path, *, split: str = "val", image_root: str | Path | None = None, limit: int | None = None
) -> list[BenchmarkItem]:
    """TextVQA 0.5.1 as released: ``TextVQA_0.5.1_{split}.json`` (``{"data": [...]}``) in ``root``;
    images ``train_images/{image_id}.jpg`` for train and val, ``test_images/`` for test.

    ``reference``: ``question_id``, ``image_id``, ``answers`` (ten strings, ``None`` on test).
    """
    root = Path(root)
    path = _find_file(root, [f"TextVQA_0.5.1_{split}.json"], f"TextVQA {split} questions")
    data = _get(_load_json(path), "data", list, path, "top level")
    folder = "test_images" if split == "test" else "train_images"
    img_dir = Path(image_root) if image_root is not None else _find_dir(root, [folder, f"images/{folder}"])
    items = []
    for i, rec in enumerate(_take(data, limit)):
        where = f"data[{i}]"
        qid = _get(rec, "question_id", int, path, where)
        image_id = _get(rec, "image_id", str, path, where)
        text = _get(rec, "question", str, path, where)
        items.append(
            BenchmarkItem(
                benchmark="textvqa",
                uid=str(qid),
                prompt=short_answer_prompt(text),
                image_path=img_dir / f"{image_id}.jpg",
                reference={
                    "question_id": qid,
                    "image_id": image_id,
                    "question": text,
                    "answers": _answer_strings(rec, path, where),
                },
            )
        )
    return items


# --------------------------------------------------------------------------- VizWiz


def read_vizwiz(
    root: str | Path, *, split: str = "val", image_root: str | Path | None = None, limit: int | None = None
) -> list[BenchmarkItem]:
    """VizWiz-VQA as released: ``Annotations/{split}.json`` (a list of ``{"image", "question",
    "answers", "answer_type", "answerable"}``; test has only image and question); images
    ``{split}/{image}``.

    ``reference``: ``image`` (the submission key), ``answers`` (ten strings or ``None``),
    ``answer_type``, ``answerable``.
    """
    root = Path(root)
    path = _find_file(root, [f"Annotations/{split}.json", f"{split}.json"], f"VizWiz {split} annotations")
    data = _load_json(path)
    if not isinstance(data, list):
        raise BenchmarkFormatError(
            path, "top level", "<root>", f"expected a list of questions, got {type(data).__name__}"
        )
    img_dir = Path(image_root) if image_root is not None else _find_dir(root, [split, f"images/{split}"])
    items = []
    for i, rec in enumerate(_take(data, limit)):
        where = f"record {i}"
        image = _get(rec, "image", str, path, where)
        text = _get(rec, "question", str, path, where)
        items.append(
            BenchmarkItem(
                benchmark="vizwiz",
                uid=image,
                prompt=short_answer_prompt(text, preamble=[VIZWIZ_UNANSWERABLE]),
                image_path=img_dir / image,
                reference={
                    "image": image,
                    "question": text,
                    "answers": _answer_strings(rec, path, where),
                    "answer_type": _get(rec, "answer_type", str, path, where, optional=True),
                    "answerable": _get(rec, "answerable", int, path, where, optional=True),
                },
            )
        )
    return items


# --------------------------------------------------------------------------- GQA


def read_gqa(
    root: str | Path,
    *,
    split: str = "testdev_balanced",
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> list[BenchmarkItem]:
    """GQA as released: ``{split}_questions.json`` (a dict question id -> record with ``question``,
    ``imageId``, ``answer``, …) in ``root`` or ``root/questions``; images ``images/{imageId}.jpg``.

    ``reference``: ``question_id`` (a string, as in the file), ``image_id``, ``answer`` (``None`` when
    the split has no answers).
    """
    root = Path(root)
    path = _find_file(
        root, [f"{split}_questions.json", f"questions/{split}_questions.json"], f"GQA {split} questions"
    )
    data = _load_json(path)
    if not isinstance(data, dict):
        raise BenchmarkFormatError(
            path, "top level", "<root>", f"expected an object keyed by question id, got {type(data).__name__}"
        )
    img_dir = Path(image_root) if image_root is not None else _find_dir(root, ["images"])
    items = []
    for qid, rec in _take(list(data.items()), limit):
        where = f"question {qid}"
        image_id = _get(rec, "imageId", str, path, where)
        text = _get(rec, "question", str, path, where)
        items.append(
            BenchmarkItem(
                benchmark="gqa",
                uid=str(qid),
                prompt=short_answer_prompt(text),
                image_path=img_dir / f"{image_id}.jpg",
                reference={
                    "question_id": str(qid),
                    "image_id": image_id,
                    "question": text,
                    "answer": _get(rec, "answer", str, path, where, optional=True),
                },
            )
        )
    return items


# --------------------------------------------------------------------------- POPE


POPE_CATEGORIES = ("adversarial", "popular", "random")


def read_pope(
    root: str | Path,
    *,
    categories: Sequence[str] = POPE_CATEGORIES,
    dataset: str = "coco",
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> list[BenchmarkItem]:
    """POPE as released: one JSON-lines file per negative-sampling category,
    ``{dataset}_pope_{category}.json`` (``.jsonl`` also accepted), each line ``{"question_id", "image",
    "text", "label"}``; images (COCO val2014) in ``val2014/`` or ``images/`` under ``root``.
    ``limit`` applies per category, so every category stays represented.

    ``reference``: ``category``, ``question_id``, ``image``, ``question``, ``label`` (``"yes"``/``"no"``).
    Items keep the file order, which the official answer-file format relies on.
    """
    root = Path(root)
    img_dir = Path(image_root) if image_root is not None else _find_dir(root, ["val2014", "images", "."])
    items = []
    for cat in categories:
        path = _find_file(
            root, [f"{dataset}_pope_{cat}.json", f"{dataset}_pope_{cat}.jsonl"], f"POPE {cat} file"
        )
        for lineno, rec in _take(_load_jsonl(path), limit):
            where = f"line {lineno}"
            qid = _get(rec, "question_id", (int, str), path, where)
            image = _get(rec, "image", str, path, where)
            text = _get(rec, "text", str, path, where)
            label = _get(rec, "label", str, path, where, optional=True)
            if label is not None and label.strip().lower() not in ("yes", "no"):
                raise BenchmarkFormatError(path, where, "label", f"expected 'yes' or 'no', got {label!r}")
            items.append(
                BenchmarkItem(
                    benchmark="pope",
                    uid=f"{cat}/{qid}",
                    prompt=short_answer_prompt(text),
                    image_path=img_dir / image,
                    reference={
                        "category": cat,
                        "question_id": qid,
                        "image": image,
                        "question": text,
                        "label": label.strip().lower() if label is not None else None,
                    },
                )
            )
    return items


# --------------------------------------------------------------------------- ScienceQA


def read_scienceqa(
    root: str | Path,
    *,
    split: str = "test",
    image_only: bool = True,
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> list[BenchmarkItem]:
    """ScienceQA as released: ``problems.json`` (pid -> problem) and ``pid_splits.json`` (split -> pids)
    in ``root``; images ``images/{split}/{pid}/{image}``. ``image_only`` keeps the IMG subset (problems
    with an image), the one the paper reports.

    Prompt: ``Context: {hint}`` (when there is a hint), the question, lettered choices.
    ``reference``: ``pid``, ``answer`` (letter), ``options`` (letter -> text), ``subject``, ``grade``.
    """
    root = Path(root)
    ppath = _find_file(root, ["problems.json"], "ScienceQA problems.json")
    spath = _find_file(root, ["pid_splits.json"], "ScienceQA pid_splits.json")
    problems = _load_json(ppath)
    splits = _load_json(spath)
    if not isinstance(problems, dict):
        raise BenchmarkFormatError(ppath, "top level", "<root>", "expected an object keyed by problem id")
    pids = _get(splits, split, list, spath, "top level")
    img_dir = Path(image_root) if image_root is not None else root / "images" / split
    items: list[BenchmarkItem] = []
    for pid in pids:
        if limit is not None and len(items) >= limit:
            break
        pid = str(pid)
        if pid not in problems:
            raise BenchmarkFormatError(
                spath, f"split {split!r}", "pid", f"problem {pid} is not in {ppath.name}"
            )
        p = problems[pid]
        where = f"problem {pid}"
        image = _get(p, "image", str, ppath, where, optional=True)
        if image_only and not image:
            continue
        choices = _get(p, "choices", list, ppath, where)
        if not 2 <= len(choices) <= 26 or not all(isinstance(c, str) for c in choices):
            raise BenchmarkFormatError(
                ppath, where, "choices", f"expected 2+ option strings, got {choices!r}"
            )
        answer = _get(p, "answer", int, ppath, where)
        if not 0 <= answer < len(choices):
            raise BenchmarkFormatError(
                ppath, where, "answer", f"index {answer} out of range for {len(choices)} choices"
            )
        letters = [chr(ord("A") + k) for k in range(len(choices))]
        hint = (_get(p, "hint", str, ppath, where, optional=True) or "").strip()
        question = _get(p, "question", str, ppath, where)
        items.append(
            BenchmarkItem(
                benchmark="scienceqa",
                uid=pid,
                prompt=choice_prompt(
                    question, choices, hint=f"Context: {hint}" if hint else None, with_image=bool(image)
                ),
                image_path=(img_dir / pid / image) if image else None,
                reference={
                    "pid": pid,
                    "question": question,
                    "answer": letters[answer],
                    "options": dict(zip(letters, choices)),
                    "subject": _get(p, "subject", str, ppath, where, optional=True),
                    "grade": _get(p, "grade", str, ppath, where, optional=True),
                },
                task="multiple_choice",
            )
        )
    return items


# --------------------------------------------------------------------------- MMBench


def _is_blank(value: str | None) -> bool:
    # pandas writes missing cells as empty strings; some releases carry literal "nan" / "None".
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def read_mmbench(path: str | Path, *, circular: bool = True, limit: int | None = None) -> list[BenchmarkItem]:
    """MMBench as released: a TSV (``MMBench_DEV_EN.tsv`` …, or a folder holding exactly one ``.tsv``)
    with columns ``index, question, hint, A, B, C, D, answer, category, image, …``; ``image`` is a
    base64 image, or (VLMEvalKit releases) the ``index`` of another row whose image it shares.

    Circular evaluation: a question with n options is asked n times, the options rotated left by
    0..n-1 places; submission indices are ``index + shift * 1_000_000`` as in MMBench's own files. A file
    that already contains such copies (indices ≥ 1e6) is used as is. ``circular=False`` keeps shift 0.
    ``limit`` counts questions, not rotated copies.

    ``reference``: ``index`` (of this variant), ``group`` (original index), ``shift``, ``options``
    (letter -> text, as shown), ``answer`` (letter, ``None`` on test), ``category``, ``l2-category``,
    ``question``, ``hint``, ``split``.
    """
    path = Path(path)
    if path.is_dir():
        tsvs = sorted(path.glob("*.tsv"))
        if len(tsvs) != 1:
            raise FileNotFoundError(
                f"expected exactly one MMBench .tsv in {path}, found {[p.name for p in tsvs]}; "
                "pass the file itself"
            )
        path = tsvs[0]
    # Base64 images exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        for col in ("index", "question", "A", "B", "image"):
            if col not in header:
                raise BenchmarkFormatError(path, "header", col, f"missing column (columns: {header})")
        rows = list(reader)

    images: dict[int, str] = {}
    parsed = []
    for r, row in enumerate(rows):
        where = f"row {r + 2}"  # 1-based, after the header line
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError):
            raise BenchmarkFormatError(
                path, where, "index", f"expected an integer, got {row['index']!r}"
            ) from None
        where = f"row {r + 2} (index {index})"
        options = []
        for letter in (chr(ord("A") + k) for k in range(26)):
            if letter not in header or _is_blank(row.get(letter)):
                break
            options.append(row[letter].strip())
        if len(options) < 2:
            raise BenchmarkFormatError(
                path, where, "A/B", "a multiple-choice question needs at least options A and B"
            )
        answer = None if _is_blank(row.get("answer")) else row["answer"].strip()
        if answer is not None and not (len(answer) == 1 and ord(answer) - ord("A") in range(len(options))):
            raise BenchmarkFormatError(path, where, "answer", f"{answer!r} is not one of the option letters")
        image = row.get("image") or ""
        if _is_blank(image):
            raise BenchmarkFormatError(path, where, "image", "empty")
        images[index] = image
        parsed.append((where, index, row, options, answer))

    def resolve_image(where: str, index: int, seen: tuple[int, ...] = ()) -> str:
        value = images[index].strip()
        # VLMEvalKit stores a repeated image once; the other rows hold the owning row's index.
        if len(value) <= 64 and value.isdigit():
            ref = int(value)
            if ref not in images or ref in seen:
                raise BenchmarkFormatError(path, where, "image", f"refers to index {ref}, which has no image")
            return resolve_image(where, ref, (*seen, index))
        return value

    precomputed = any(index >= MMBENCH_SHIFT_STRIDE for _, index, *_ in parsed)
    items = []
    groups_seen: set[int] = set()
    for where, index, row, options, answer in parsed:
        group, file_shift = index % MMBENCH_SHIFT_STRIDE, index // MMBENCH_SHIFT_STRIDE
        if limit is not None and group not in groups_seen and len(groups_seen) >= limit:
            continue
        groups_seen.add(group)
        if precomputed and not circular and file_shift != 0:
            continue
        shifts = [0] if (precomputed or not circular) else list(range(len(options)))
        image = resolve_image(where, index)
        hint = None if _is_blank(row.get("hint")) else row["hint"].strip()
        for shift in shifts:
            shown = options[shift:] + options[:shift]
            letters = [chr(ord("A") + k) for k in range(len(options))]
            shown_answer = None
            if answer is not None:
                # Rotating left by `shift` moves the option at position a to position a - shift.
                shown_answer = letters[(ord(answer) - ord("A") - shift) % len(options)]
            variant_index = index + shift * MMBENCH_SHIFT_STRIDE
            items.append(
                BenchmarkItem(
                    benchmark="mmbench",
                    uid=str(variant_index),
                    prompt=choice_prompt(row["question"], shown, hint=hint),
                    image_base64=image,
                    reference={
                        "index": variant_index,
                        "group": str(group),
                        "shift": file_shift if precomputed else shift,
                        "question": row["question"],
                        "hint": hint,
                        "options": dict(zip(letters, shown)),
                        "answer": shown_answer,
                        "category": None if _is_blank(row.get("category")) else row["category"],
                        "l2-category": None if _is_blank(row.get("l2-category")) else row["l2-category"],
                        "split": None if _is_blank(row.get("split")) else row["split"],
                    },
                    task="multiple_choice",
                )
            )
    return items


# --------------------------------------------------------------------------- MME


def _mme_base(root: Path) -> Path:
    for cand in (
        root,
        root / "MME_Benchmark_release_version",
        root / "MME_Benchmark_release_version" / "MME_Benchmark",
        root / "MME_Benchmark",
    ):
        if (cand / "existence").is_dir() or any((cand / t).is_dir() for t in MME_SUBTASKS):
            return cand
    raise FileNotFoundError(
        f"no MME subtask folders (existence/, OCR/, …) under {root} or its MME_Benchmark_release_version/"
    )


def read_mme(
    root: str | Path, *, subtasks: Sequence[str] = MME_SUBTASKS, limit: int | None = None
) -> list[BenchmarkItem]:
    """MME as released (``MME_Benchmark_release_version/``): one folder per subtask; for artwork,
    celebrity, landmark, posters and scene the images are in ``images/`` and the questions in
    ``questions_answers_YN/{stem}.txt``, for the others ``{stem}.txt`` sits beside ``{stem}.jpg/png``.
    Each txt has one ``question<TAB>Yes|No`` line per question (two per image).

    ``limit`` counts questions but keeps an image's questions together (acc+ needs both).
    ``reference``: ``subtask``, ``image`` (file name), ``question``, ``answer`` (``"Yes"``/``"No"``).
    """
    base = _mme_base(Path(root))
    items: list[BenchmarkItem] = []
    for task in subtasks:
        if task not in MME_SUBTASKS:
            raise ValueError(f"unknown MME subtask {task!r}; the official subtasks are {list(MME_SUBTASKS)}")
        tdir = base / task
        if not tdir.is_dir():
            raise FileNotFoundError(f"MME subtask folder {tdir} is missing")
        if (tdir / "questions_answers_YN").is_dir():
            txt_dir, img_dir = tdir / "questions_answers_YN", tdir / "images"
        else:
            txt_dir, img_dir = tdir, tdir
        for txt in sorted(txt_dir.glob("*.txt")):
            if limit is not None and len(items) >= limit:
                return items
            image = next(
                (
                    img_dir / f"{txt.stem}{s}"
                    for s in _IMAGE_SUFFIXES
                    if (img_dir / f"{txt.stem}{s}").is_file()
                ),
                None,
            )
            if image is None:
                raise BenchmarkFormatError(txt, "file", "image", f"no image {txt.stem}.jpg/.png in {img_dir}")
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if not lines:
                raise BenchmarkFormatError(txt, "file", "question", "no question lines")
            for k, line in enumerate(lines):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 2:
                    raise BenchmarkFormatError(
                        txt,
                        f"line {k + 1}",
                        "question<TAB>answer",
                        f"expected 2 tab-separated fields, got {len(parts)}",
                    )
                question, answer = parts[0].strip(), parts[1].strip()
                if answer.lower() not in ("yes", "no"):
                    raise BenchmarkFormatError(
                        txt, f"line {k + 1}", "answer", f"expected Yes or No, got {answer!r}"
                    )
                items.append(
                    BenchmarkItem(
                        benchmark="mme",
                        uid=f"{task}/{txt.stem}/{k}",
                        prompt=short_answer_prompt(question),
                        image_path=image,
                        reference={
                            "subtask": task,
                            "image": image.name,
                            "question": question,
                            "answer": answer,
                        },
                    )
                )
    return items


# --------------------------------------------------------------------------- registry


BENCHMARK_READERS: dict[str, Callable[..., list[BenchmarkItem]]] = {
    "vqav2": read_vqav2,
    "textvqa": read_textvqa,
    "vizwiz": read_vizwiz,
    "gqa": read_gqa,
    "pope": read_pope,
    "scienceqa": read_scienceqa,
    "mmbench": read_mmbench,
    "mme": read_mme,
}


def read_benchmark(name: str, root: str | Path, **kwargs: Any) -> list[BenchmarkItem]:
    """Read benchmark ``name`` from ``root`` (its released layout); ``kwargs`` go to the reader."""
    key = name.lower()
    if key not in BENCHMARK_READERS:
        raise ValueError(f"unknown text benchmark {name!r}; available: {sorted(BENCHMARK_READERS)}")
    return BENCHMARK_READERS[key](root, **kwargs)
