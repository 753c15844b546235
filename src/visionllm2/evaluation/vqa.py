"""Open-ended VQA metrics: official VQA answer normalisation and accuracy (VQAv2, TextVQA, VizWiz), GQA."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "normalize_answer",
    "vqa_accuracy",
    "vqa_accuracy_mean",
    "gqa_normalize",
    "gqa_exact_match",
]

# --- Tables of the official VQA evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEval.py) -------
# They are data, reproduced entry for entry so that scores match the evaluation server, including the
# entries that can never fire after lower-casing ("Im", "Ive", ...) and the one reversed entry
# ("somebody'd" -> "somebodyd").
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

# The official "manual map": number words become digits ("none" counts as zero).
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Note what is *not* here: "." (handled separately, see below), ":", "'", "*", "&", "%", "#", "$".
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# Official pattern "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) look-*ahead* that can never fail in
# front of a ".", so it reduces to "a period not followed by a digit" — "3.5" keeps its period, "yes." not.
_PERIOD = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (== 32) positionally as ``count``, so at most 32 periods are removed;
# we keep the limit so that even degenerate answers normalise exactly as on the server.
_PERIOD_MAX_REMOVED = 32
# A comma between digits ("1,000") switches every punctuation mark to deletion instead of a space.
_DIGIT_COMMA = re.compile(r"\d,\d")


def _process_punctuation(text: str) -> str:
    """The official punctuation step: a mark touching a space (or any text with a digit comma) is deleted,
    otherwise it becomes a space ("red/white" -> "red white", "red / white" -> "red  white")."""
    out = text
    delete_all = _DIGIT_COMMA.search(text) is not None
    for mark in PUNCTUATION:
        # The official test looks at the *original* text, not at the partially processed one.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVED)


def _process_digits_articles(text: str) -> str:
    """Lower-case, map number words to digits, drop articles, restore contractions, re-join on spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer exactly as the official VQA evaluation does before comparing.

    Steps, in the official order: newlines and tabs become spaces and the ends are stripped; punctuation
    (see :data:`PUNCTUATION`) is deleted or turned into a space; periods not followed by a digit are
    removed; the text is lower-cased and split on whitespace; number words ``zero``..``ten`` (and
    ``none``) become digits; the articles ``a``, ``an``, ``the`` are dropped; apostrophe-less
    contractions are restored (``dont`` -> ``don't``); words are re-joined with single spaces.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("The Red/White one")
    'red white 1'
    """
    if not isinstance(text, str):
        raise TypeError(f"answers must be strings, got {type(text).__name__}: {text!r}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against its human answers (normally ten).

    ``acc = mean over the leave-one-out subsets of min(#matches in the subset / 3, 1)``: each human
    answer is left out in turn, the prediction scores ``min(matches/3, 1)`` against the remaining ones,
    and the scores are averaged. Prediction and human answers are both passed through
    :func:`normalize_answer`. (The official script only re-normalises human answers when they
    disagree, because the released VQAv2 annotations are already normalised; normalising them always
    gives the same result on those files and is what the TextVQA evaluation does.)

    With ten answers this equals ``min(n/3, 1)`` for n ≥ 4 or n = 0 matching humans, and
    ``(10 - n)/10 * n/3 + n/10 * (n - 1)/3`` otherwise (e.g. 0.3 for one match, 0.6 for two, 0.9 for three).
    """
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer; got an empty list")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    matches = sum(g == pred for g in gts)
    total = 0.0
    for g in gts:
        # Leaving this answer out removes one match exactly when it is itself a match.
        total += min((matches - (g == pred)) / 3.0, 1.0)
    return total / len(gts)


def vqa_accuracy_mean(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean :func:`vqa_accuracy` over questions, as a fraction in [0, 1]."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists; they must pair up")
    if not predictions:
        raise ValueError("no predictions to score")
    return sum(vqa_accuracy(p, a) for p, a in zip(predictions, answers)) / len(predictions)


def gqa_normalize(text: str) -> str:
    """GQA answer as compared by the official script after the LLaVA-style conversion: stripped, trailing
    periods removed, lower-cased (GQA answers are single lower-case words or short phrases)."""
    return text.strip().rstrip(".").strip().lower()


def gqa_exact_match(prediction: str, answer: str) -> bool:
    """GQA accuracy of one question: exact match after :func:`gqa_normalize` on both sides."""
    return gqa_normalize(prediction) == gqa_normalize(answer)
