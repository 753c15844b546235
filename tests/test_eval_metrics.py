"""Text-benchmark metrics against hand-computed cases (official VQA rules) and direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visionllm2.evaluation.choice import ChoiceRecord, choice_accuracy, circular_scores, extract_choice
from visionllm2.evaluation.mme import (
    MME_COGNITION,
    MME_PERCEPTION,
    MMERecord,
    mme_scores,
    mme_subtask_scores,
    parse_mme_answer,
)
from visionllm2.evaluation.pope import extract_yes_no, pope_scores
from visionllm2.evaluation.segmentation import (
    SegmentationEvaluator,
    confusion_matrix,
    reduce_zero_label,
    scores_from_confusion,
)
from visionllm2.evaluation.vqa import (
    gqa_exact_match,
    normalize_answer,
    vqa_accuracy,
    vqa_accuracy_mean,
)

# --------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Case, surrounding whitespace, newlines and tabs.
        ("  Yes\n", "yes"),
        ("red\tand white", "red and white"),
        # Number words -> digits, "none" -> 0; articles dropped.
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("The cat", "cat"),
        ("a man and an umbrella", "man and umbrella"),
        # Periods: removed unless followed by a digit.
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("st. louis", "st louis"),
        # Punctuation touching a space is deleted; otherwise it becomes a space.
        ("red/white", "red white"),
        ("red / white", "red white"),
        ("black-and-white", "black and white"),
        ("left, right", "left right"),
        ("(maybe)", "maybe"),
        # A digit comma anywhere switches every mark to deletion.
        ("1,000", "1000"),
        ("2,500 red/blue", "2500 redblue"),
        # Characters the official list leaves alone.
        ("it's", "it's"),
        ("5:30", "5:30"),
        ("50%", "50%"),
        # Contractions restored (after lower-casing, so only lower-case keys can fire).
        ("dont", "don't"),
        ("Isnt", "isn't"),
        ("whats up", "what's up"),
        ("Im", "im"),
        ("", ""),
    ],
)
def test_normalize_answer_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_removal_is_capped_like_the_official_code() -> None:
    # The official call passes re.UNICODE (32) as the replacement count.
    assert normalize_answer("." * 40 + "x") == "." * 8 + "x"


# --------------------------------------------------------------------------- VQA accuracy


def _ten(pred: str, n: int, other: str = "zzz") -> list[str]:
    return [pred] * n + [other] * (10 - n)


@pytest.mark.parametrize(
    ("n", "expected"),
    # Leave-one-out: (10 - n) subsets keep n matches, n subsets keep n - 1.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_leave_one_out(n: int, expected: float) -> None:
    assert vqa_accuracy("blue", _ten("blue", n)) == pytest.approx(expected)


def test_vqa_accuracy_matches_after_normalisation() -> None:
    answers = ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"]
    # "Two." -> "2" matches three humans ("two" normalises to "2" too).
    assert vqa_accuracy("Two.", answers) == pytest.approx(0.9)
    assert vqa_accuracy("The 3", answers) == pytest.approx(1.0)
    # Non-ten answer lists follow the same rule: 5 answers, 2 matches -> (3 * 2/3 + 2 * 1/3) / 5.
    assert vqa_accuracy("x", ["x", "x", "y", "y", "y"]) == pytest.approx((3 * 2 / 3 + 2 * 1 / 3) / 5)


def test_vqa_accuracy_mean_and_errors() -> None:
    assert vqa_accuracy_mean(["a dog", "cat"], [_ten("dog", 10), _ten("cat", 1)]) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("x", [])
    with pytest.raises(ValueError, match="pair up"):
        vqa_accuracy_mean(["x"], [])
    with pytest.raises(TypeError, match="strings"):
        vqa_accuracy(3, ["3"])  # type: ignore[arg-type]


def test_gqa_exact_match() -> None:
    assert gqa_exact_match("White.", "white")
    assert gqa_exact_match("  yes ", "yes")
    assert not gqa_exact_match("the white one", "white")  # no VQA normalisation in GQA
    assert not gqa_exact_match("2", "two")


# --------------------------------------------------------------------------- POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. No other animals are present.", "yes"),  # only the first sentence counts
        ("I see no,dog", "yes"),  # "no,dog" loses its comma -> "nodog", not a word "no"
        ("NO", "yes"),  # the official rule is case-sensitive
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_extraction_official_rule(text: str, expected: str) -> None:
    assert extract_yes_no(text) == expected


def test_pope_scores_vs_direct_computation() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.5
    preds = np.where(rng.random(200) < 0.8, labels, ~labels)  # 80% right
    texts = ["Yes, there is." if p else "No, there is not." for p in preds]
    s = pope_scores(texts, ["yes" if y else "no" for y in labels])
    tp = int(np.sum(preds & labels))
    fp = int(np.sum(preds & ~labels))
    fn = int(np.sum(~preds & labels))
    tn = int(np.sum(~preds & ~labels))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert (s.tp, s.fp, s.fn, s.tn) == (tp, fp, fn, tn)
    assert s.accuracy == pytest.approx(np.mean(preds == labels))
    assert s.precision == pytest.approx(precision)
    assert s.recall == pytest.approx(recall)
    assert s.f1 == pytest.approx(2 * precision * recall / (precision + recall))
    assert s.yes_ratio == pytest.approx(np.mean(preds))  # of the predictions, not the labels
    assert s.count == 200


def test_pope_degenerate_and_bad_input() -> None:
    s = pope_scores(["no", "no"], ["yes", "no"], extract=False)
    assert s.precision == 0.0 and s.recall == 0.0 and s.f1 == 0.0 and s.yes_ratio == 0.0
    with pytest.raises(ValueError, match="label #0"):
        pope_scores(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="pair up"):
        pope_scores(["yes"], [])


# --------------------------------------------------------------------------- MME


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        (" no ", "no"),
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("Not at all", "no"),  # "no" inside the first four characters
        ("There is no dog", "other"),  # only the first four characters count
        ("I think yes", "other"),
        ("", "other"),
    ],
)
def test_mme_answer_parsing(text: str, expected: str) -> None:
    assert parse_mme_answer(text) == expected


def test_mme_scores_vs_direct_computation() -> None:
    rng = np.random.default_rng(1)
    records, truth = [], {}
    for task in (*MME_PERCEPTION[:3], MME_COGNITION[0]):
        right = []
        for img in range(15):
            for answer in ("Yes", "No"):
                ok = bool(rng.random() < 0.7)
                wrong = "No" if answer == "Yes" else "Yes"
                records.append(MMERecord(task, f"{img}.jpg", answer, answer if ok else wrong))
                right.append(ok)
        pairs = np.array(right).reshape(15, 2)
        acc, acc_plus = pairs.mean(), pairs.all(axis=1).mean()
        truth[task] = 100 * (acc + acc_plus)
    s = mme_scores(records)
    for task, score in truth.items():
        assert s["subtasks"][task]["score"] == pytest.approx(score)
    assert s["perception"] == pytest.approx(sum(truth[t] for t in MME_PERCEPTION[:3]))
    assert s["cognition"] == pytest.approx(truth[MME_COGNITION[0]])
    assert set(s["missing_subtasks"]) == set(MME_PERCEPTION[3:] + MME_COGNITION[1:])


def test_mme_subtask_hand_case_and_errors() -> None:
    recs = [
        MMERecord("OCR", "a.jpg", "Yes", "yes"),
        MMERecord("OCR", "a.jpg", "No", "no"),
        MMERecord("OCR", "b.jpg", "Yes", "yes"),
        MMERecord("OCR", "b.jpg", "No", "maybe"),  # "other" is wrong
    ]
    s = mme_subtask_scores(recs)
    assert s["acc"] == pytest.approx(0.75) and s["acc_plus"] == pytest.approx(0.5)
    assert s["score"] == pytest.approx(125.0) and s["num_images"] == 2
    with pytest.raises(ValueError, match="unknown MME subtask"):
        mme_scores([MMERecord("ocr", "a.jpg", "Yes", "yes")])
    with pytest.raises(ValueError, match="expected Yes or No"):
        mme_subtask_scores([MMERecord("OCR", "a.jpg", "Maybe", "yes")])


# --------------------------------------------------------------------------- multiple choice

OPTIONS = {"A": "red", "B": "dark red", "C": "blue", "D": "a cat"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Rule 1: the whole answer is a letter.
        ("B", "B"),
        ("(c)", "C"),
        ("D.", "D"),
        (" a ", "A"),
        ("E", None),  # not an option
        # Rule 2: leading letter with a delimiter.
        ("C. blue", "C"),
        ("(B) dark red", "B"),
        ("D: a cat", "D"),
        # Rule 3: explicit statement.
        ("The answer is C.", "C"),
        ("Answer: (B)", "B"),
        ("I think the correct option is D because of the whiskers", "D"),
        # Rule 4: option text, exact or contained (the longer containing option wins).
        ("Blue", "C"),
        ("It is dark red.", "B"),
        ("The colour is red", "A"),
        ("Cat", "D"),  # "a cat" and "cat" normalise alike
        ("red or blue", None),  # ambiguous
        # Rule 5: a single stand-alone letter.
        ("I would pick C here", "C"),
        ("A bird sits on the branch", None),  # long answer: a lone "A" is an article
        ("", None),
        ("no idea", None),
    ],
)
def test_extract_choice_rules(text: str, expected: str | None) -> None:
    assert extract_choice(text, OPTIONS) == expected


def test_extract_choice_accepts_option_lists() -> None:
    assert extract_choice("soft", ["sticky", "soft"]) == "B"
    assert extract_choice("C", ["sticky", "soft"]) is None


def test_choice_accuracy() -> None:
    opts = [["x", "y"], ["x", "y", "z"], ["p", "q"]]
    assert choice_accuracy(["A", "The answer is C.", "p"], ["A", "C", "B"], opts) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pair up"):
        choice_accuracy(["A"], ["A", "B"], opts[:1])


def test_circular_scores_need_every_variant_right() -> None:
    records = [
        ChoiceRecord("q1", 0, True, "ocr"),
        ChoiceRecord("q1", 1, True, "ocr"),
        ChoiceRecord("q1", 2, True, "ocr"),
        ChoiceRecord("q2", 0, True, "ocr"),
        ChoiceRecord("q2", 1, False, "ocr"),
        ChoiceRecord("q3", 0, False, "scene"),
        ChoiceRecord("q3", 1, True, "scene"),
        ChoiceRecord("q4", 0, True, "scene"),
    ]
    s = circular_scores(records)
    assert s["circular_accuracy"] == pytest.approx(2 / 4)  # q1 and q4
    assert s["vanilla_accuracy"] == pytest.approx(3 / 4)  # q1, q2, q4 at shift 0
    assert s["per_category"] == pytest.approx({"ocr": 0.5, "scene": 0.5})
    assert s["num_questions"] == 4 and s["num_variants"] == 8


# --------------------------------------------------------------------------- segmentation


def _direct_iou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int) -> list[float]:
    valid = target != ignore
    out = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        out.append(inter / union if union else math.nan)
    return out


def test_miou_vs_direct_computation() -> None:
    rng = np.random.default_rng(2)
    num_classes = 6
    ev = SegmentationEvaluator(num_classes=num_classes)
    preds, targets = [], []
    for _ in range(3):
        t = rng.integers(0, num_classes - 1, size=(17, 23))  # class 5 never in the ground truth
        t[rng.random(t.shape) < 0.1] = 255
        p = np.where(
            rng.random(t.shape) < 0.6, np.where(t == 255, 0, t), rng.integers(0, num_classes - 1, t.shape)
        )
        ev.update(p, t)
        preds.append(p)
        targets.append(t)
    s = ev.compute()
    p_all, t_all = np.concatenate(preds), np.concatenate(targets)
    iou = _direct_iou(p_all, t_all, num_classes, 255)
    assert math.isnan(s["IoU"][5]) and math.isnan(iou[5])  # absent and never predicted
    np.testing.assert_allclose(s["IoU"][:5], iou[:5])
    assert s["mIoU"] == pytest.approx(np.nanmean(iou))
    valid = t_all != 255
    assert s["aAcc"] == pytest.approx(np.mean(p_all[valid] == t_all[valid]))
    accs = [np.mean(p_all[valid & (t_all == c)] == c) for c in range(5)]
    assert s["mAcc"] == pytest.approx(np.mean(accs))


def test_miou_hand_case() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = scores_from_confusion(cm)
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1).
    assert s["IoU"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["aAcc"] == pytest.approx(4 / 6)


def test_reduce_zero_label_ade20k() -> None:
    raw = np.array([[0, 1, 150], [255, 2, 0]])
    assert reduce_zero_label(raw).tolist() == [[255, 0, 149], [255, 1, 255]]
    pred = np.array([[7, 0, 149], [3, 1, 9]])
    cm = confusion_matrix(pred, raw, num_classes=150, reduce_zero=True)
    assert cm.sum() == 3 and cm[0, 0] == 1 and cm[149, 149] == 1 and cm[1, 1] == 1


def test_segmentation_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), num_classes=2)
    with pytest.raises(ValueError, match="reduce_zero=True"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 150), num_classes=150)
    with pytest.raises(ValueError, match="predicted classes"):
        confusion_matrix(np.full((2, 2), 3), np.zeros((2, 2), int), num_classes=2)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2), int), num_classes=2)


def test_segmentation_evaluator_merge_and_names() -> None:
    t = np.array([[0, 1], [1, 1]])
    a = SegmentationEvaluator(num_classes=2, class_names=["sky", "road"])
    b = SegmentationEvaluator(num_classes=2, class_names=["sky", "road"])
    a.update(t, t)
    b.update(np.zeros_like(t), t)
    a.merge(b)
    s = a.compute()
    assert s["per_class"]["sky"]["IoU"] == pytest.approx(2 / 5)
    assert s["per_class"]["road"]["Acc"] == pytest.approx(3 / 6)
