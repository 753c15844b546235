"""MME scores: yes/no parsing, per-subtask acc and acc+ (both of an image's questions right), totals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MME_PERCEPTION",
    "MME_COGNITION",
    "MME_SUBTASKS",
    "MMERecord",
    "parse_mme_answer",
    "mme_subtask_scores",
    "mme_scores",
]

# The official subtask lists (MME eval_tool/calculation.py). Folder names on disk match these exactly.
MME_PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)  # fmt: skip
MME_SUBTASKS: tuple[str, ...] = MME_PERCEPTION + MME_COGNITION


def parse_mme_answer(text: str) -> str:
    """Map a model answer to ``"yes"``, ``"no"`` or ``"other"`` with the official MME rule.

    The answer is lower-cased (and stripped); if it is exactly ``yes``/``no`` that is the label;
    otherwise only its first four characters are inspected: ``yes`` in them -> yes, else ``no`` in them
    -> no (so "Not really" is *no*), else *other*, which is always wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"MME predictions must be strings, got {type(text).__name__}: {text!r}")
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@dataclass
class MMERecord:
    """One MME question with its prediction. MME asks two questions per image (one yes, one no)."""

    subtask: str
    image: str  # image file name, the unit of acc+
    answer: str  # ground truth, "Yes" or "No" (any case)
    prediction: str  # raw model answer


def mme_subtask_scores(records: Sequence[MMERecord]) -> dict[str, float | int]:
    """Scores of one subtask: ``acc`` (fraction of questions right), ``acc_plus`` (fraction of images
    with *all* their questions right) and the official ``score = 100 * (acc + acc_plus)`` (max 200)."""
    if not records:
        raise ValueError("no MME records to score")
    per_image: dict[str, list[bool]] = defaultdict(list)
    for i, r in enumerate(records):
        gt = r.answer.strip().lower()
        if gt not in ("yes", "no"):
            raise ValueError(
                f"MME record #{i} (subtask {r.subtask!r}, image {r.image!r}) has answer {r.answer!r}; "
                "expected Yes or No"
            )
        per_image[r.image].append(parse_mme_answer(r.prediction) == gt)
    correct = sum(sum(v) for v in per_image.values())
    acc = correct / len(records)
    acc_plus = sum(all(v) for v in per_image.values()) / len(per_image)
    return {
        "acc": acc,
        "acc_plus": acc_plus,
        "score": 100.0 * (acc + acc_plus),
        "num_questions": len(records),
        "num_images": len(per_image),
    }


def mme_scores(records: Sequence[MMERecord]) -> dict[str, object]:
    """Official MME summary: per-subtask acc / acc+ / score, and the perception (10 subtasks, max 2000)
    and cognition (4 subtasks, max 800) totals, each the sum of its subtask scores.

    Subtasks without records are listed under ``missing_subtasks`` and contribute nothing to the totals,
    so partial runs (``--limit``) stay comparable subtask by subtask.
    """
    by_task: dict[str, list[MMERecord]] = defaultdict(list)
    for r in records:
        if r.subtask not in MME_SUBTASKS:
            raise ValueError(
                f"unknown MME subtask {r.subtask!r}; the official subtasks are {list(MME_SUBTASKS)}"
            )
        by_task[r.subtask].append(r)
    subtasks = {name: mme_subtask_scores(by_task[name]) for name in MME_SUBTASKS if name in by_task}
    return {
        "perception": sum(float(subtasks[n]["score"]) for n in MME_PERCEPTION if n in subtasks),
        "cognition": sum(float(subtasks[n]["score"]) for n in MME_COGNITION if n in subtasks),
        "subtasks": subtasks,
        "missing_subtasks": [n for n in MME_SUBTASKS if n not in subtasks],
    }
