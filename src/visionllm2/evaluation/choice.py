"""Multiple choice: option-letter extraction, accuracy (ScienceQA-IMG) and MMBench circular evaluation."""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visionllm2.evaluation.vqa import normalize_answer

__all__ = [
    "option_letters",
    "extract_choice",
    "choice_accuracy",
    "ChoiceRecord",
    "circular_scores",
]

_LETTERS = string.ascii_uppercase


def option_letters(n: int) -> list[str]:
    """The first ``n`` option letters, ``A``, ``B``, …"""
    if not 1 <= n <= len(_LETTERS):
        raise ValueError(f"a multiple-choice question needs 1..{len(_LETTERS)} options, got {n}")
    return list(_LETTERS[:n])


def _as_mapping(options: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(options, Mapping):
        return {str(k): str(v) for k, v in options.items()}
    return dict(zip(option_letters(len(options)), (str(o) for o in options)))


# Rule 1: the whole answer is one letter, maybe bracketed or punctuated: "B", "(b)", "C.", "[D]".
_ONLY_LETTER = re.compile(r"^[\s\(\[\"']*([A-Za-z])[\s\)\]\"'.:,;!]*$")
# Rule 2: the answer opens with a letter and a delimiter: "A. red", "(B) the cat", "C: ...", "D) ...".
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):,])(?:\s|$)")
# Rule 3: an explicit statement: "The answer is B.", "Answer: (C)", "the correct option is D".
_STATED_LETTER = re.compile(r"(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z0-9])")
# Rule 5: stand-alone capital letters anywhere.
_LONE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")


def _text_choice(text: str, options: dict[str, str]) -> str | None:
    """Rule 4: match option texts, after VQA normalisation, against the answer."""
    pred = normalize_answer(text)
    if not pred:
        return None
    norm = {k: normalize_answer(v) for k, v in options.items()}
    exact = [k for k, v in norm.items() if v and v == pred]
    if len(exact) == 1:
        return exact[0]
    padded = f" {pred} "
    found = [k for k, v in norm.items() if v and f" {v} " in padded]
    # An option contained in a longer found option ("red" in "dark red") is not evidence on its own.
    found = [k for k in found if not any(k != o and f" {norm[k]} " in f" {norm[o]} " for o in found)]
    return found[0] if len(found) == 1 else None


def extract_choice(text: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """Extract the chosen option letter from a model answer, or ``None`` when it cannot be told.

    ``options`` maps letters to option texts (or is a list, lettered ``A``, ``B``, …). Rules, first hit wins:

    1. the whole answer is a single valid letter, possibly bracketed/punctuated (``"B"``, ``"(c)"``,
       ``"D."``) — the only rule that accepts lower case;
    2. the answer starts with a valid capital letter and a delimiter: ``"A. red"``, ``"(B) the cat"``,
       ``"C: ..."``, ``"D) ..."``;
    3. the first explicit statement ``answer/option/choice [is] [:] X`` with a valid capital ``X``
       (``"The answer is B."``, ``"Answer: (C)"``);
    4. option text: the VQA-normalised answer equals exactly one normalised option, or contains exactly
       one (as whole words; an option inside a longer contained option does not count);
    5. exactly one distinct valid capital letter stands alone in the answer (``"I pick C"``); a lone
       ``A`` is ignored in answers of more than three words, where it is most likely an article.

    ``None`` (an unparseable answer) is scored as wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"predictions must be strings, got {type(text).__name__}: {text!r}")
    opts = _as_mapping(options)
    if not opts:
        raise ValueError("extract_choice needs at least one option")
    valid = set(opts)
    if not text.strip():
        return None

    m = _ONLY_LETTER.match(text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    m = _LEADING_LETTER.match(text)
    if m and (m.group(1) or m.group(2)) in valid:
        return m.group(1) or m.group(2)
    for m in _STATED_LETTER.finditer(text):
        if m.group(1) in valid:
            return m.group(1)
    by_text = _text_choice(text, opts)
    if by_text is not None:
        return by_text
    long_answer = len(text.split()) > 3
    lone = {ch for ch in _LONE_LETTER.findall(text) if ch in valid and not (ch == "A" and long_answer)}
    return lone.pop() if len(lone) == 1 else None


def choice_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    options: Sequence[Mapping[str, str] | Sequence[str]],
) -> float:
    """Fraction of questions whose extracted letter (:func:`extract_choice`) equals the answer letter."""
    if not (len(predictions) == len(answers) == len(options)):
        raise ValueError(
            f"got {len(predictions)} predictions, {len(answers)} answers and {len(options)} option sets; "
            "they must pair up"
        )
    if not predictions:
        raise ValueError("no multiple-choice predictions to score")
    right = sum(extract_choice(p, o) == a for p, a, o in zip(predictions, answers, options))
    return right / len(predictions)


@dataclass
class ChoiceRecord:
    """One scored variant of a multiple-choice question. Variants of the same question (MMBench's
    circular shifts of the options) share ``group``; ``shift`` 0 is the original order."""

    group: str
    shift: int
    correct: bool
    category: str | None = None


def circular_scores(records: Sequence[ChoiceRecord]) -> dict[str, object]:
    """MMBench circular evaluation.

    A question counts as right only if *every* one of its circular variants is answered correctly
    (``circular_accuracy``). ``vanilla_accuracy`` scores the original order (shift 0) alone, for
    reference. ``per_category`` gives the circular accuracy of each category. All fractions in [0, 1].
    """
    if not records:
        raise ValueError("no multiple-choice records to score")
    groups: dict[str, list[ChoiceRecord]] = defaultdict(list)
    for r in records:
        groups[r.group].append(r)
    group_ok = {g: all(r.correct for r in rs) for g, rs in groups.items()}
    originals = [r for r in records if r.shift == 0]
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for g, rs in groups.items():
        cat = next((r.category for r in rs if r.category), None)
        if cat is not None:
            by_cat[cat].append(group_ok[g])
    return {
        "circular_accuracy": sum(group_ok.values()) / len(group_ok),
        "vanilla_accuracy": (sum(r.correct for r in originals) / len(originals)) if originals else None,
        "num_questions": len(group_ok),
        "num_variants": len(records),
        "per_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
    }
