"""Submission files in each text benchmark's own format, and the score summary of a finished run.

Both work on the :class:`~visionllm2.data.formats.benchmarks.BenchmarkItem` list a reader returned and
``predictions``, a mapping ``item.uid -> raw model answer``. Accuracies in summaries are percentages
(0–100) as papers report them; MME is in its own points (max 200 per subtask).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from visionllm2.data.formats.benchmarks import BenchmarkItem
from visionllm2.evaluation.choice import ChoiceRecord, circular_scores, extract_choice
from visionllm2.evaluation.mme import MMERecord, mme_scores
from visionllm2.evaluation.pope import pope_scores
from visionllm2.evaluation.vqa import gqa_exact_match, gqa_normalize, vqa_accuracy

__all__ = [
    "write_vqav2_submission",
    "write_textvqa_submission",
    "write_vizwiz_submission",
    "write_gqa_submission",
    "write_pope_submission",
    "write_scienceqa_submission",
    "write_mmbench_submission",
    "write_mme_submission",
    "write_submission",
    "score_benchmark",
]


def _pred(predictions: Mapping[str, str], item: BenchmarkItem) -> str:
    if item.uid not in predictions:
        raise KeyError(
            f"no prediction for {item.benchmark} item {item.uid!r}; predict every item you pass in "
            "(slice the item list for partial runs)"
        )
    value = predictions[item.uid]
    if not isinstance(value, str):
        raise TypeError(f"prediction for {item.benchmark} item {item.uid!r} must be a string, got {value!r}")
    return value


def _one_line(text: str) -> str:
    """Answers in line-based formats (MME txt) must not break the line or the tab-separated fields."""
    return " ".join(text.split())


def _check(items: Sequence[BenchmarkItem], name: str) -> None:
    wrong = {it.benchmark for it in items} - {name}
    if wrong:
        raise ValueError(f"expected {name} items, got items of {sorted(wrong)}")


def _write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    return path


# --------------------------------------------------------------------------- writers


def write_vqav2_submission(
    path: str | Path,
    items: Sequence[BenchmarkItem],
    predictions: Mapping[str, str],
    *,
    fill_question_ids: Iterable[int] | None = None,
) -> Path:
    """VQAv2 results file for EvalAI: ``[{"question_id": int, "answer": str}, ...]``.

    The test-dev phase expects answers for every test-standard question; pass all of
    ``v2_OpenEnded_mscoco_test2015_questions.json``'s ids as ``fill_question_ids`` and the ones not
    predicted get an empty answer (as LLaVA's converter does).
    """
    _check(items, "vqav2")
    rows = {it.reference["question_id"]: _pred(predictions, it).strip() for it in items}
    for qid in fill_question_ids or ():
        rows.setdefault(int(qid), "")
    return _write_json(path, [{"question_id": q, "answer": a} for q, a in rows.items()])


def write_textvqa_submission(
    path: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> Path:
    """TextVQA results file for EvalAI: ``[{"question_id": int, "answer": str}, ...]``."""
    _check(items, "textvqa")
    rows = [
        {"question_id": it.reference["question_id"], "answer": _pred(predictions, it).strip()} for it in items
    ]
    return _write_json(path, rows)


def write_vizwiz_submission(
    path: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> Path:
    """VizWiz-VQA results file for EvalAI: ``[{"image": "VizWiz_test_00000000.jpg", "answer": str}, ...]``."""
    _check(items, "vizwiz")
    rows = [{"image": it.reference["image"], "answer": _pred(predictions, it).strip()} for it in items]
    return _write_json(path, rows)


def write_gqa_submission(
    path: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> Path:
    """GQA predictions for the official ``eval.py``: ``[{"questionId": str, "prediction": str}, ...]``,
    predictions normalised as compared (:func:`~visionllm2.evaluation.vqa.gqa_normalize`)."""
    _check(items, "gqa")
    rows = [
        {"questionId": it.reference["question_id"], "prediction": gqa_normalize(_pred(predictions, it))}
        for it in items
    ]
    return _write_json(path, rows)


def write_pope_submission(
    out_dir: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> list[Path]:
    """POPE answer files, one JSON-lines file per category (``pope_{category}_answers.jsonl``), lines in
    the label file's order with ``{"question_id", "image", "question", "answer"}`` — the official
    ``evaluate.py`` reads ``answer`` line by line against the label file."""
    _check(items, "pope")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_cat: dict[str, list[BenchmarkItem]] = defaultdict(list)
    for it in items:
        by_cat[it.reference["category"]].append(it)
    paths = []
    for cat, its in by_cat.items():
        path = out_dir / f"pope_{cat}_answers.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for it in its:
                ref = it.reference
                row = {
                    "question_id": ref["question_id"],
                    "image": ref["image"],
                    "question": ref["question"],
                    "answer": _pred(predictions, it).strip(),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def write_scienceqa_submission(
    path: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> Path:
    """ScienceQA results as the official scorer reads them: ``{"results": {pid: option index, -1 when no
    option could be extracted}, "outputs": {pid: raw answer}}``."""
    _check(items, "scienceqa")
    results, outputs = {}, {}
    for it in items:
        text = _pred(predictions, it)
        letter = extract_choice(text, it.reference["options"])
        results[it.uid] = ord(letter) - ord("A") if letter is not None else -1
        outputs[it.uid] = text
    return _write_json(path, {"results": results, "outputs": outputs})


def write_mmbench_submission(
    path: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> Path:
    """MMBench submission table as tab-separated text (the evaluation server takes the same columns as
    an .xlsx; convert with any spreadsheet tool): ``index, question, hint, A.., prediction, answer,
    category, l2-category, split``, one row per circular variant with its rotated options."""
    _check(items, "mmbench")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_opts = max((len(it.reference["options"]) for it in items), default=4)
    letters = [chr(ord("A") + k) for k in range(max(n_opts, 4))]
    columns = [
        "index",
        "question",
        "hint",
        *letters,
        "prediction",
        "answer",
        "category",
        "l2-category",
        "split",
    ]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for it in items:
            ref = it.reference
            opts = ref["options"]
            w.writerow(
                [ref["index"], ref["question"], ref["hint"] or "", *(opts.get(k, "") for k in letters)]
                + [_pred(predictions, it).strip(), ref["answer"] or "", ref["category"] or ""]
                + [ref["l2-category"] or "", ref["split"] or ""]
            )
    return path


def write_mme_submission(
    out_dir: str | Path, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> list[Path]:
    """MME results in the official eval_tool layout: ``{subtask}.txt`` per subtask, one line per
    question ``image<TAB>question<TAB>Yes|No<TAB>prediction``, an image's two questions adjacent (the
    official ``calculation.py`` pairs consecutive lines)."""
    _check(items, "mme")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[BenchmarkItem]] = defaultdict(list)
    for it in items:
        by_task[it.reference["subtask"]].append(it)
    paths = []
    for task, its in by_task.items():
        path = out_dir / f"{task}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for it in its:
                r = it.reference
                f.write(
                    f"{r['image']}\t{r['question']}\t{r['answer']}\t{_one_line(_pred(predictions, it))}\n"
                )
        paths.append(path)
    return paths


def _single(writer: Callable[..., Path], filename: str) -> Callable[..., list[Path]]:
    return lambda out_dir, items, preds: [writer(Path(out_dir) / filename, items, preds)]


SUBMISSION_WRITERS: dict[str, Callable[[Path, Sequence[BenchmarkItem], Mapping[str, str]], list[Path]]] = {
    "vqav2": _single(write_vqav2_submission, "vqav2_results.json"),
    "textvqa": _single(write_textvqa_submission, "textvqa_results.json"),
    "vizwiz": _single(write_vizwiz_submission, "vizwiz_results.json"),
    "gqa": _single(write_gqa_submission, "gqa_predictions.json"),
    "pope": write_pope_submission,
    "scienceqa": _single(write_scienceqa_submission, "scienceqa_results.json"),
    "mmbench": _single(write_mmbench_submission, "mmbench_submission.tsv"),
    "mme": write_mme_submission,
}


def write_submission(
    name: str, items: Sequence[BenchmarkItem], predictions: Mapping[str, str], out_dir: str | Path
) -> list[Path]:
    """Write benchmark ``name``'s submission file(s) into ``out_dir``; returns the paths written."""
    if name not in SUBMISSION_WRITERS:
        raise ValueError(f"no submission writer for {name!r}; available: {sorted(SUBMISSION_WRITERS)}")
    return SUBMISSION_WRITERS[name](Path(out_dir), items, predictions)


# --------------------------------------------------------------------------- scores


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _unscored(items: Sequence[BenchmarkItem], why: str) -> dict[str, Any]:
    return {"num_predictions": len(items), "num_scored": 0, "note": why}


def _score_vqa(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    scored = [
        (it, vqa_accuracy(_pred(predictions, it), it.reference["answers"]))
        for it in items
        if it.reference.get("answers")
    ]
    if not scored:
        return _unscored(items, "the split has no answers; submit the results file to the evaluation server")
    by_type: dict[str, list[float]] = defaultdict(list)
    for it, acc in scored:
        if it.reference.get("answer_type"):
            by_type[it.reference["answer_type"]].append(acc)
    return {
        "accuracy": _pct(sum(a for _, a in scored) / len(scored)),
        "num_scored": len(scored),
        "per_answer_type": {t: _pct(sum(v) / len(v)) for t, v in sorted(by_type.items())},
    }


def _score_gqa(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    scored = [
        gqa_exact_match(_pred(predictions, it), it.reference["answer"])
        for it in items
        if it.reference.get("answer") is not None
    ]
    if not scored:
        return _unscored(items, "the split has no answers")
    return {"accuracy": _pct(sum(scored) / len(scored)), "num_scored": len(scored)}


def _score_pope(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    by_cat: dict[str, list[BenchmarkItem]] = defaultdict(list)
    for it in items:
        if it.reference.get("label") is not None:
            by_cat[it.reference["category"]].append(it)
    if not by_cat:
        return _unscored(items, "no labels")
    per_cat = {}
    for cat, its in by_cat.items():
        s = pope_scores([_pred(predictions, it) for it in its], [it.reference["label"] for it in its])
        per_cat[cat] = {
            "accuracy": _pct(s.accuracy),
            "precision": _pct(s.precision),
            "recall": _pct(s.recall),
            "f1": _pct(s.f1),
            "yes_ratio": _pct(s.yes_ratio),
            "num_scored": s.count,
        }
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    # The paper-style POPE number is the mean over the three negative-sampling categories.
    mean = {k: sum(c[k] for c in per_cat.values()) / len(per_cat) for k in keys}
    return {**mean, "num_scored": sum(c["num_scored"] for c in per_cat.values()), "per_category": per_cat}


def _score_scienceqa(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    ok = [
        extract_choice(_pred(predictions, it), it.reference["options"]) == it.reference["answer"]
        for it in items
    ]
    if not ok:
        return _unscored(items, "no items")
    return {"accuracy": _pct(sum(ok) / len(ok)), "num_scored": len(ok)}


def _score_mmbench(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    records = [
        ChoiceRecord(
            group=it.reference["group"],
            shift=it.reference["shift"],
            correct=extract_choice(_pred(predictions, it), it.reference["options"]) == it.reference["answer"],
            category=it.reference.get("category"),
        )
        for it in items
        if it.reference.get("answer") is not None
    ]
    if not records:
        return _unscored(items, "the split has no answers; submit the table to the MMBench server")
    s = circular_scores(records)
    return {
        "accuracy": _pct(s["circular_accuracy"]),  # the reported MMBench number (circular)
        "vanilla_accuracy": _pct(s["vanilla_accuracy"]),
        "num_scored": s["num_questions"],
        "num_variants": s["num_variants"],
        "per_category": {c: _pct(v) for c, v in s["per_category"].items()},
    }


def _score_mme(items: Sequence[BenchmarkItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    records = [
        MMERecord(
            subtask=it.reference["subtask"],
            image=it.reference["image"],
            answer=it.reference["answer"],
            prediction=_pred(predictions, it),
        )
        for it in items
    ]
    if not records:
        return _unscored(items, "no items")
    s = mme_scores(records)
    return {**s, "num_scored": len(records)}


SCORERS: dict[str, Callable[[Sequence[BenchmarkItem], Mapping[str, str]], dict[str, Any]]] = {
    "vqav2": _score_vqa,
    "textvqa": _score_vqa,
    "vizwiz": _score_vqa,
    "gqa": _score_gqa,
    "pope": _score_pope,
    "scienceqa": _score_scienceqa,
    "mmbench": _score_mmbench,
    "mme": _score_mme,
}


def score_benchmark(
    name: str, items: Sequence[BenchmarkItem], predictions: Mapping[str, str]
) -> dict[str, Any]:
    """Score a run: the benchmark's headline metric(s) and breakdowns, JSON-serialisable.

    ``vqav2``/``textvqa``/``vizwiz``: ``accuracy`` (VQA accuracy), ``per_answer_type``; ``gqa``:
    ``accuracy`` (exact match); ``pope``: mean ``accuracy``/``precision``/``recall``/``f1``/``yes_ratio``
    over categories plus ``per_category``; ``scienceqa``: ``accuracy``; ``mmbench``: circular
    ``accuracy``, ``vanilla_accuracy``, ``per_category``; ``mme``: ``perception``, ``cognition``,
    ``subtasks``. Items without ground truth (test splits) are not scored (``num_scored``).
    """
    if name not in SCORERS:
        raise ValueError(f"no scorer for {name!r}; available: {sorted(SCORERS)}")
    _check(items, name)
    return {"benchmark": name, "num_items": len(items), **SCORERS[name](items, predictions)}
