"""POPE object-hallucination metrics: yes/no extraction, accuracy, precision, recall, F1 and yes-ratio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["PopeScores", "extract_yes_no", "pope_scores"]


def extract_yes_no(text: str) -> str:
    """Map a free-form answer to ``"yes"`` or ``"no"`` with the official POPE rule (POPE ``evaluate.py``).

    Only the first sentence counts (text before the first ``.``); commas are removed; the sentence is
    split on single spaces, and it is a *no* when one of its words is exactly ``No``, ``no`` or ``not``.
    Everything else — including an empty or unrelated answer — is a *yes*, as in the official script
    (so "NO" or "Not really" count as yes: the rule is case-sensitive on purpose, to match published
    numbers).
    """
    if not isinstance(text, str):
        raise TypeError(f"POPE predictions must be strings, got {type(text).__name__}: {text!r}")
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


@dataclass
class PopeScores:
    """POPE metrics with *yes* as the positive class; all values are fractions in [0, 1]."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float  # fraction of *predictions* that are yes (a hallucination-bias indicator)
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def count(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _label(value: str, what: str, index: int) -> bool:
    v = value.strip().lower() if isinstance(value, str) else value
    if v not in ("yes", "no"):
        raise ValueError(f"POPE {what} #{index} is {value!r}; expected 'yes' or 'no'")
    return v == "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str], *, extract: bool = True) -> PopeScores:
    """Score POPE predictions against ``"yes"``/``"no"`` labels.

    ``predictions`` are raw model answers, mapped with :func:`extract_yes_no` when ``extract`` is true
    (pass ``extract=False`` for predictions that already are ``"yes"``/``"no"``). Precision, recall and F1
    are 0 when their denominator is 0 (the official script would divide by zero).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels; they must pair up")
    if not predictions:
        raise ValueError("no POPE predictions to score")
    tp = fp = tn = fn = 0
    for i, (pred, label) in enumerate(zip(predictions, labels)):
        p = _label(extract_yes_no(pred) if extract else pred, "prediction", i)
        y = _label(label, "label", i)
        if p and y:
            tp += 1
        elif p:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores(
        accuracy=(tp + tn) / n,
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=(tp + fp) / n,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )
