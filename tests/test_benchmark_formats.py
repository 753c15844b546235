"""Benchmark readers on fixtures in each released schema, submission writers and end-to-end scoring."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from visionllm2.data.formats.benchmarks import (
    CHOICE_ANSWER,
    SHORT_ANSWER,
    VIZWIZ_UNANSWERABLE,
    BenchmarkFormatError,
    read_benchmark,
    read_gqa,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
    read_textvqa,
    read_vizwiz,
    read_vqav2,
)
from visionllm2.data.sample import Sample
from visionllm2.evaluation.submission import score_benchmark, write_submission, write_vqav2_submission

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"

# Images the fixtures refer to, created at test time so the repository stays free of binaries.
IMAGES = {
    "vqav2": ["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000073.jpg"],
    "textvqa": ["train_images/003a8ae2ef43b901.jpg", "train_images/00685bc495504d61.jpg"],
    "vizwiz": ["val/VizWiz_val_00000000.jpg", "val/VizWiz_val_00000001.jpg"],
    "gqa": ["images/n288870.jpg", "images/n161313.jpg"],
    "pope": ["val2014/COCO_val2014_000000310196.jpg", "val2014/COCO_val2014_000000210789.jpg"],
    "scienceqa": ["images/test/7/image.png", "images/test/9/image.png"],
    "mmbench": [],
    "mme": [
        "MME_Benchmark_release_version/existence/000000006040.jpg",
        "MME_Benchmark_release_version/existence/000000018150.jpg",
        "MME_Benchmark_release_version/artwork/images/10002.jpg",
        "MME_Benchmark_release_version/code_reasoning/0020.png",
    ],
}


def materialise(name: str, tmp_path: Path) -> Path:
    """Copy fixture ``name`` to a temp dir and add its (tiny, distinct-colour) images."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    for k, rel in enumerate(IMAGES[name]):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8 + k, 6), (40 * k, 100, 200)).save(p)
    return root


# --------------------------------------------------------------------------- readers


def test_vqav2_reader(tmp_path: Path) -> None:
    root = materialise("vqav2", tmp_path)
    items = read_vqav2(root)
    assert [it.uid for it in items] == ["42000", "42001", "73000"]
    first = items[0]
    assert first.prompt == f"<image>\nWhat are the people eating?\n{SHORT_ANSWER}"
    assert first.image_path == root / "val2014" / "COCO_val2014_000000000042.jpg"
    assert first.reference["answers"][:2] == ["pizza", "pizza"] and len(first.reference["answers"]) == 10
    assert items[1].reference["answer_type"] == "number"
    sample = first.to_sample()
    assert isinstance(sample, Sample)
    assert sample.images[0].size == (8, 6) and sample.images[0].mode == "RGB"
    assert sample.conversation[0].role == "user" and sample.conversation[0].content == first.prompt
    assert sample.meta["question_id"] == 42000 and sample.meta["benchmark"] == "vqav2"
    assert len(read_vqav2(root, limit=2)) == 2


def test_vqav2_test_split_without_annotations(tmp_path: Path) -> None:
    root = materialise("vqav2", tmp_path)
    q = json.loads((root / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    q["data_subtype"] = "test-dev2015"
    (root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(q))
    items = read_vqav2(root, split="test-dev2015")
    assert all(it.reference["answers"] is None for it in items)
    # test-dev questions use the test2015 images.
    assert items[0].image_path == root / "test2015" / "COCO_test2015_000000000042.jpg"
    s = score_benchmark("vqav2", items, {it.uid: "yes" for it in items})
    assert s["num_scored"] == 0


def test_textvqa_reader(tmp_path: Path) -> None:
    root = materialise("textvqa", tmp_path)
    items = read_textvqa(root)
    assert [it.uid for it in items] == ["34602", "34603"]
    assert items[0].image_path == root / "train_images" / "003a8ae2ef43b901.jpg"
    assert items[1].reference["answers"][0] == "Copenhagen"
    assert items[0].prompt.endswith(SHORT_ANSWER) and items[0].prompt.startswith("<image>\n")
    assert items[1].load_image().size == (9, 6)


def test_vizwiz_reader(tmp_path: Path) -> None:
    root = materialise("vizwiz", tmp_path)
    items = read_vizwiz(root)
    assert [it.uid for it in items] == ["VizWiz_val_00000000.jpg", "VizWiz_val_00000001.jpg"]
    assert items[0].prompt == (
        "<image>\nOk. There is another picture I hope it is a better one.\n"
        f"{VIZWIZ_UNANSWERABLE}\n{SHORT_ANSWER}"
    )
    assert items[0].reference["answerable"] == 0 and items[1].reference["answer_type"] == "other"
    assert items[1].image_path == root / "val" / "VizWiz_val_00000001.jpg"


def test_gqa_reader(tmp_path: Path) -> None:
    root = materialise("gqa", tmp_path)
    items = read_gqa(root)
    assert [it.uid for it in items] == ["20968379", "201640614"]
    assert items[0].reference["answer"] == "white"
    assert items[1].image_path == root / "images" / "n161313.jpg"


def test_pope_reader_keeps_file_order_and_categories(tmp_path: Path) -> None:
    root = materialise("pope", tmp_path)
    items = read_pope(root)
    assert [it.uid for it in items] == [
        "adversarial/1", "adversarial/2", "popular/1", "popular/2", "random/1", "random/2", "random/3",
    ]  # fmt: skip
    assert items[0].prompt == f"<image>\nIs there a snowboard in the image?\n{SHORT_ANSWER}"
    assert items[0].image_path == root / "val2014" / "COCO_val2014_000000310196.jpg"
    assert [it.reference["label"] for it in items[-3:]] == ["yes", "no", "yes"]
    assert len(read_pope(root, limit=1)) == 3  # limit is per category


def test_scienceqa_reader_image_subset(tmp_path: Path) -> None:
    root = materialise("scienceqa", tmp_path)
    items = read_scienceqa(root)
    assert [it.uid for it in items] == ["7", "9"]  # "5" has no image; "1" is train
    assert items[0].prompt == (
        "<image>\nContext: Armored catfish eat plants and small invertebrates. They find their food on the "
        "bottom of rivers.\nFigure: armored catfish.\n"
        "Which animal's mouth is also adapted for bottom feeding?\n"
        f"A. sturgeon\nB. discus\nC. arowana\n{CHOICE_ANSWER}"
    )
    assert items[0].reference["answer"] == "A" and items[1].reference["answer"] == "B"
    assert items[0].image_path == root / "images" / "test" / "7" / "image.png"
    everything = read_scienceqa(root, image_only=False)
    text_only = everything[0]
    assert text_only.uid == "5" and not text_only.has_image
    assert not text_only.prompt.startswith("<image>") and text_only.to_sample().images == []


def test_mmbench_reader_circular(tmp_path: Path) -> None:
    items = read_mmbench(FIXTURES / "mmbench")  # a folder with one .tsv
    # 4 + 3 + 2 options -> 9 circular variants.
    assert [it.uid for it in items] == [
        "0",
        "1000000",
        "2000000",
        "3000000",
        "7",
        "1000007",
        "2000007",
        "12",
        "1000012",
    ]
    shift1 = items[1]
    assert shift1.reference["options"] == {"A": "red", "B": "blue", "C": "yellow", "D": "green"}
    assert shift1.reference["answer"] == "A"  # "red" was B, rotated left by one
    assert [it.reference["answer"] for it in items[:4]] == ["B", "A", "D", "C"]
    assert [it.reference["answer"] for it in items[4:7]] == ["C", "B", "A"]
    assert shift1.prompt == (
        "<image>\nWhat is the main colour of the image?\nA. red\nB. blue\nC. yellow\nD. green\n"
        + CHOICE_ANSWER
    )
    assert items[4].prompt.startswith(
        "<image>\nThe image shows a simple geometric figure.\nWhich shape is shown?\n"
    )
    assert all(it.reference["group"] == "7" for it in items[4:7])
    assert items[0].load_image().getpixel((0, 0)) == (255, 0, 0)
    # Row 12 stores "0" in its image column: it shares row 0's image.
    assert items[7].load_image().getpixel((1, 1)) == (255, 0, 0)
    assert items[4].load_image().getpixel((0, 0)) == (0, 0, 255)
    assert [it.uid for it in read_mmbench(FIXTURES / "mmbench", circular=False)] == ["0", "7", "12"]
    assert len(read_mmbench(FIXTURES / "mmbench", limit=1)) == 4


def test_mmbench_reader_uses_precomputed_circular_copies(tmp_path: Path) -> None:
    src = (FIXTURES / "mmbench" / "MMBench_DEV_EN.tsv").read_text().splitlines()
    header, row0 = src[0], src[1].split("\t")
    copy = list(row0)
    copy[0], copy[3:7], copy[7] = "1000000", ["red", "blue", "yellow", "green"], "A"
    path = tmp_path / "mmbench_dev_20230712.tsv"
    path.write_text("\n".join([header, "\t".join(row0), "\t".join(copy)]) + "\n")
    items = read_mmbench(path)
    assert [it.uid for it in items] == ["0", "1000000"]
    assert [it.reference["shift"] for it in items] == [0, 1]
    assert items[1].reference["answer"] == "A" and items[1].reference["group"] == "0"


def test_mme_reader_both_layouts(tmp_path: Path) -> None:
    root = materialise("mme", tmp_path)
    items = read_mme(root, subtasks=["existence", "artwork", "code_reasoning"])
    assert [it.uid for it in items] == [
        "existence/000000006040/0", "existence/000000006040/1", "existence/000000018150/0",
        "existence/000000018150/1", "artwork/10002/0", "artwork/10002/1", "code_reasoning/0020/0",
        "code_reasoning/0020/1",
    ]  # fmt: skip
    art = items[4]
    assert art.image_path == root / "MME_Benchmark_release_version" / "artwork" / "images" / "10002.jpg"
    assert art.reference == {
        "subtask": "artwork",
        "image": "10002.jpg",
        "question": "Does this artwork exist in the form of painting? Please answer yes or no.",
        "answer": "Yes",
    }
    assert art.prompt == f"<image>\n{art.reference['question']}\n{SHORT_ANSWER}"
    code = items[-1]  # CRLF lines are read cleanly and the .png image is found
    assert code.reference["answer"] == "No" and code.image_path.suffix == ".png"
    assert len(read_mme(root, subtasks=["existence"], limit=1)) == 2  # an image's questions stay together
    with pytest.raises(FileNotFoundError, match="count"):
        read_mme(root)  # the default asks for all 14 official subtasks


def test_read_benchmark_dispatch(tmp_path: Path) -> None:
    root = materialise("gqa", tmp_path)
    assert [it.uid for it in read_benchmark("GQA", root)] == ["20968379", "201640614"]
    with pytest.raises(ValueError, match="unknown text benchmark"):
        read_benchmark("nope", root)


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "gqa"
    shutil.copytree(FIXTURES / "gqa", root)
    item = read_gqa(root)[0]
    with pytest.raises(FileNotFoundError, match="n288870.jpg"):
        item.load_image()


# --------------------------------------------------------------------------- malformed files


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_malformed_vqav2_names_file_record_and_field(tmp_path: Path) -> None:
    root = materialise("vqav2", tmp_path)
    qfile = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    _rewrite_json(qfile, lambda d: d["questions"][1].pop("question"))
    with pytest.raises(BenchmarkFormatError) as e:
        read_vqav2(root)
    assert e.value.path == str(qfile) and e.value.record == "questions[1]" and e.value.field == "question"
    assert "v2_OpenEnded_mscoco_val2014_questions.json" in str(e.value)


def test_malformed_vqav2_annotation_answer(tmp_path: Path) -> None:
    root = materialise("vqav2", tmp_path)
    afile = root / "v2_mscoco_val2014_annotations.json"
    _rewrite_json(afile, lambda d: d["annotations"][2]["answers"][3].update(answer=3))
    with pytest.raises(BenchmarkFormatError, match=r"question_id 73000, answers\[3\]: field 'answer'"):
        read_vqav2(root)


def test_malformed_textvqa_type(tmp_path: Path) -> None:
    root = materialise("textvqa", tmp_path)
    _rewrite_json(root / "TextVQA_0.5.1_val.json", lambda d: d["data"][0].update(question_id="34602"))
    with pytest.raises(BenchmarkFormatError, match=r"data\[0\]: field 'question_id': expected int"):
        read_textvqa(root)


def test_malformed_json_and_jsonl(tmp_path: Path) -> None:
    root = materialise("pope", tmp_path)
    f = root / "coco_pope_popular.json"
    f.write_text(
        f.read_text() + '{"question_id": 3, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}\n'
    )
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_popular.json: line 3: field 'label'"):
        read_pope(root)
    f.write_text("{not json\n")
    with pytest.raises(BenchmarkFormatError, match="line 1: field '<json>'"):
        read_pope(root)
    root = materialise("gqa", tmp_path)
    (root / "testdev_balanced_questions.json").write_text("[1, 2")
    with pytest.raises(BenchmarkFormatError, match="not valid JSON"):
        read_gqa(root)


def test_malformed_scienceqa_answer_index(tmp_path: Path) -> None:
    root = materialise("scienceqa", tmp_path)
    _rewrite_json(root / "problems.json", lambda d: d["9"].update(answer=5))
    with pytest.raises(BenchmarkFormatError, match=r"problems.json: problem 9: field 'answer'"):
        read_scienceqa(root)


def test_malformed_mmbench(tmp_path: Path) -> None:
    lines = (FIXTURES / "mmbench" / "MMBench_DEV_EN.tsv").read_text().splitlines()
    bad = lines[2].split("\t")
    bad[7] = "D"  # only three options
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join([lines[0], lines[1], "\t".join(bad)]) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"bad.tsv: row 3 \(index 7\): field 'answer'"):
        read_mmbench(path)
    path.write_text("\n".join([lines[0].replace("\timage\t", "\tpicture\t"), lines[1]]) + "\n")
    with pytest.raises(BenchmarkFormatError, match="header: field 'image'"):
        read_mmbench(path)


def test_malformed_mme_line(tmp_path: Path) -> None:
    root = materialise("mme", tmp_path)
    txt = root / "MME_Benchmark_release_version" / "existence" / "000000018150.txt"
    txt.write_text("Is there a cat in this image?\tNo\textra\n")
    with pytest.raises(BenchmarkFormatError, match=r"000000018150.txt: line 1: field 'question<TAB>answer'"):
        read_mme(root, subtasks=["existence"])
    txt.write_text("Is there a cat in this image?\tMaybe\n")
    with pytest.raises(BenchmarkFormatError, match="field 'answer'"):
        read_mme(root, subtasks=["existence"])


def test_missing_file_lists_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="TextVQA_0.5.1_val.json"):
        read_textvqa(tmp_path)


# --------------------------------------------------------------------------- submissions and scores


def test_vqav2_submission_and_score(tmp_path: Path) -> None:
    items = read_vqav2(materialise("vqav2", tmp_path))
    preds = {"42000": "Pizza.", "42001": "two", "73000": "No"}
    paths = write_submission("vqav2", items, preds, tmp_path / "out")
    rows = json.loads(paths[0].read_text())
    assert rows == [
        {"question_id": 42000, "answer": "Pizza."},
        {"question_id": 42001, "answer": "two"},
        {"question_id": 73000, "answer": "No"},
    ]
    s = score_benchmark("vqav2", items, preds)
    # pizza: 9 humans -> 1.0; "two" -> "2": 2 humans -> 0.6; "no": 1 human -> 0.3.
    assert s["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 0.3) / 3)
    assert s["per_answer_type"] == pytest.approx({"number": 60.0, "other": 100.0, "yes/no": 30.0})
    p = write_vqav2_submission(tmp_path / "full.json", items[:1], preds, fill_question_ids=[42000, 5, 6])
    assert json.loads(p.read_text()) == [
        {"question_id": 42000, "answer": "Pizza."},
        {"question_id": 5, "answer": ""},
        {"question_id": 6, "answer": ""},
    ]


def test_textvqa_vizwiz_gqa_submissions_and_scores(tmp_path: Path) -> None:
    tv = read_textvqa(materialise("textvqa", tmp_path))
    preds = {"34602": "Dakota Digital", "34603": "COPENHAGEN"}
    assert json.loads(write_submission("textvqa", tv, preds, tmp_path / "tv")[0].read_text()) == [
        {"question_id": 34602, "answer": "Dakota Digital"},
        {"question_id": 34603, "answer": "COPENHAGEN"},
    ]
    # "dakota digital": 3 humans -> 0.9; "copenhagen": 9 humans (case-folded) -> 1.0.
    assert score_benchmark("textvqa", tv, preds)["accuracy"] == pytest.approx(95.0)

    vz = read_vizwiz(materialise("vizwiz", tmp_path))
    preds = {"VizWiz_val_00000000.jpg": "Unanswerable", "VizWiz_val_00000001.jpg": "nyquil"}
    rows = json.loads(write_submission("vizwiz", vz, preds, tmp_path / "vz")[0].read_text())
    assert rows[0] == {"image": "VizWiz_val_00000000.jpg", "answer": "Unanswerable"}
    s = score_benchmark("vizwiz", vz, preds)
    assert s["accuracy"] == pytest.approx(100 * (1.0 + 0.6) / 2)  # 8 humans; 2 humans

    gq = read_gqa(materialise("gqa", tmp_path))
    preds = {"20968379": "White.", "201640614": "yes"}
    rows = json.loads(write_submission("gqa", gq, preds, tmp_path / "gq")[0].read_text())
    assert rows == [
        {"questionId": "20968379", "prediction": "white"},
        {"questionId": "201640614", "prediction": "yes"},
    ]
    assert score_benchmark("gqa", gq, preds)["accuracy"] == pytest.approx(50.0)


def test_pope_submission_and_score(tmp_path: Path) -> None:
    items = read_pope(materialise("pope", tmp_path))
    preds = {it.uid: "Yes, there is." for it in items}
    preds["random/2"] = "No, there is not."
    paths = write_submission("pope", items, preds, tmp_path / "out")
    assert [p.name for p in paths] == [
        "pope_adversarial_answers.jsonl", "pope_popular_answers.jsonl", "pope_random_answers.jsonl",
    ]  # fmt: skip
    lines = [json.loads(x) for x in paths[2].read_text().splitlines()]
    assert [x["question_id"] for x in lines] == [1, 2, 3] and lines[1]["answer"] == "No, there is not."
    s = score_benchmark("pope", items, preds)
    assert s["per_category"]["random"]["accuracy"] == pytest.approx(100.0)
    assert s["per_category"]["adversarial"]["accuracy"] == pytest.approx(50.0)
    assert s["per_category"]["adversarial"]["yes_ratio"] == pytest.approx(100.0)
    assert s["f1"] == pytest.approx((200 / 3 + 200 / 3 + 100) / 3)


def test_scienceqa_submission_and_score(tmp_path: Path) -> None:
    items = read_scienceqa(materialise("scienceqa", tmp_path))
    preds = {"7": "A", "9": "The answer is A."}
    out = json.loads(write_submission("scienceqa", items, preds, tmp_path / "o")[0].read_text())
    assert out["results"] == {"7": 0, "9": 0} and out["outputs"]["9"] == "The answer is A."
    assert score_benchmark("scienceqa", items, preds)["accuracy"] == pytest.approx(50.0)


def test_mmbench_submission_and_circular_score(tmp_path: Path) -> None:
    items = read_mmbench(FIXTURES / "mmbench" / "MMBench_DEV_EN.tsv")
    # Always answer with the text "red": right for every variant of questions 0 and 12.
    preds = {it.uid: "red" for it in items}
    preds["7"] = "C"  # "triangle": right in the original order only
    s = score_benchmark("mmbench", items, preds)
    assert s["accuracy"] == pytest.approx(200 / 3)  # groups 0 and 12 survive, 7 fails
    assert s["vanilla_accuracy"] == pytest.approx(100.0)
    assert s["per_category"] == pytest.approx({"attribute_recognition": 50.0, "image_style": 100.0})
    path = write_submission("mmbench", items, preds, tmp_path / "o")[0]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["index"] for r in rows] == [it.uid for it in items]
    assert rows[1]["A"] == "red" and rows[1]["answer"] == "A" and rows[1]["prediction"] == "red"
    assert rows[7]["C"] == "" and rows[4]["hint"] == "The image shows a simple geometric figure."


def test_mme_submission_and_score(tmp_path: Path) -> None:
    items = read_mme(materialise("mme", tmp_path), subtasks=["existence", "artwork", "code_reasoning"])
    preds = {it.uid: it.reference["answer"] for it in items}  # all right...
    preds["existence/000000018150/1"] = "No\tthere\nis not"  # ...but one
    paths = write_submission("mme", items, preds, tmp_path / "o")
    assert sorted(p.name for p in paths) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]
    lines = (tmp_path / "o" / "existence.txt").read_text().splitlines()
    assert len(lines) == 4
    assert lines[3].split("\t") == [
        "000000018150.jpg",
        "Is there a bus in this image? Please answer yes or no.",
        "Yes",
        "No there is not",
    ]
    s = score_benchmark("mme", items, preds)
    assert s["subtasks"]["existence"]["score"] == pytest.approx(75.0 + 50.0)
    assert s["perception"] == pytest.approx(125.0 + 200.0) and s["cognition"] == pytest.approx(200.0)
    assert "OCR" in s["missing_subtasks"]


def test_missing_prediction_is_reported(tmp_path: Path) -> None:
    items = read_gqa(materialise("gqa", tmp_path))
    with pytest.raises(KeyError, match="201640614"):
        score_benchmark("gqa", items, {"20968379": "white"})
    with pytest.raises(ValueError, match="expected vqav2 items"):
        score_benchmark("vqav2", items, {it.uid: "x" for it in items})
