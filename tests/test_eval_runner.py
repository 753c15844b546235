"""The evaluation runner: every benchmark's fixture through `visionllm2 eval`, submission formats, scores
wired to the metrics, answer extraction, resuming, and 2-process sharding equal to one process."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import TINY_UNET
from test_benchmark_formats import materialise
from visionllm2.cli import main
from visionllm2.config import DecoderConfig, tiny_config
from visionllm2.data.formats.benchmarks import SHORT_ANSWER, read_benchmark
from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation.cli import BENCHMARK_NAMES
from visionllm2.evaluation.mme import MME_SUBTASKS
from visionllm2.evaluation.runner import EvalItem, build_batch, plan_batches, read_predictions, weights_digest
from visionllm2.evaluation.submission import score_benchmark
from visionllm2.evaluation.suites import (
    BENCHMARKS,
    Ade20kBenchmark,
    CocoBenchmark,
    RefCocoBenchmark,
    clean_answer,
    make_benchmark,
    miou_scores,
    through_last_link,
)
from visionllm2.evaluation.world import WorldSuite, answer_of_kind, label_in_answer, link_names
from visionllm2.modeling.builder import build_model
from visionllm2.modeling.model import VisionLLM2Model
from visionllm2.ops.masks import mask_to_rle

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = ("vqav2", "textvqa", "vizwiz", "gqa", "pope", "scienceqa", "mmbench", "mme")

# A grounding decoder (det/seg/grd) and a pose decoder small enough for CPU tests; a zero score
# threshold so the random decoders return detections to write and score.
GRD = {
    "pixel_size": 64,
    "backbone": {"type": "cnn", "channels": [8, 16, 24, 32]},
    "hidden_dim": 32,
    "num_heads": 2,
    "ffn_dim": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "num_queries": 10,
    "max_classes": 40,
    "score_threshold": 0.0,
    "max_detections": 5,
    "mask_points": 64,
    "matcher_points": 64,
    "dn_number": 0,
}
POSE = {k: v for k, v in GRD.items() if k not in ("mask_points", "matcher_points", "dn_number")}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _perception_model():
    torch.manual_seed(0)
    cfg = tiny_config(
        grounding=DecoderConfig(type="grounding", link_dim=16, kwargs=GRD),
        pose=DecoderConfig(type="pose", link_dim=16, kwargs=POSE),
    )
    for fam in ("det", "seg", "grd"):
        cfg.families[fam].decoder = "grounding"
    cfg.families["pose"].decoder = "pose"
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two saved tiny random models: text only, and with grounding + pose decoders (no diffusion)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    build_model(tiny_config()).save_pretrained(root / "text")
    _perception_model().save_pretrained(root / "perception")
    return {"text": root / "text", "perception": root / "perception"}


def run_eval(model: Path, benchmark: str, out: Path, *args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(
            ["eval", "--model", str(model), "--benchmark", benchmark, "--out", str(out), "--device", "cpu"]
            + ["--no-progress", *args]
        )
    return rc, err.getvalue()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def text_data(name: str, tmp_path: Path) -> Path:
    root = materialise(name, tmp_path)
    if name == "mme":  # the release has all 14 subtask folders; the fixture fills three of them
        base = root / "MME_Benchmark_release_version"
        for task in MME_SUBTASKS:
            (base / task).mkdir(exist_ok=True)
    return root


# --------------------------------------------------------------------------- text benchmarks


@pytest.mark.parametrize("name", TEXT)
def test_text_benchmark_through_the_command(name: str, models, tmp_path: Path) -> None:
    data = text_data(name, tmp_path)
    out = tmp_path / "out"
    target = data / "MMBench_DEV_EN.tsv" if name == "mmbench" else data
    rc, err = run_eval(models["text"], name, out, "--data", str(target), "--batch-size", "3")
    assert rc == 0, err
    items = read_benchmark(name, target)
    preds = _lines(out / "predictions.jsonl")
    assert [p["uid"] for p in preds] == [it.uid for it in items]  # every item, in benchmark order
    assert all(p["answer"] == clean_answer(p["text"]) for p in preds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_items"] == len(items) and summary["num_predicted"] == len(items)
    # The summary is the metric of record applied to these predictions, nothing else.
    answers = {p["uid"]: p["answer"] for p in preds}
    assert summary["scores"] == json.loads(json.dumps(score_benchmark(name, items, answers)))
    md = (out / "summary.md").read_text()
    assert md.startswith(f"# {name}") and "| metric | value |" in md
    files = [out / p for p in summary["submission"]]
    assert files and all(f.is_file() for f in files)
    first = files[0]
    if name in ("vqav2", "textvqa"):
        rows = json.loads(first.read_text())
        assert [r["answer"] for r in rows] == [answers[it.uid] for it in items]
        assert all(isinstance(r["question_id"], int) for r in rows)
    elif name == "vizwiz":
        assert {r["image"] for r in json.loads(first.read_text())} == {it.uid for it in items}
    elif name == "gqa":
        assert {r["questionId"] for r in json.loads(first.read_text())} == {it.uid for it in items}
    elif name == "pope":
        assert sum(len(f.read_text().splitlines()) for f in files) == len(items)
        assert {f.name for f in files} == {
            f"pope_{c}_answers.jsonl" for c in ("adversarial", "popular", "random")
        }
    elif name == "scienceqa":
        res = json.loads(first.read_text())
        assert set(res["results"]) == {it.uid for it in items}
        assert all(v in (-1, 0, 1, 2, 3, 4) for v in res["results"].values())
    elif name == "mmbench":
        rows = list(csv.DictReader(io.StringIO(first.read_text()), delimiter="\t"))
        assert len(rows) == len(items) and {"index", "prediction", "A", "B"} <= set(rows[0])
    elif name == "mme":
        lines = [ln for f in files for ln in f.read_text().splitlines()]
        assert len(lines) == len(items) and all(len(ln.split("\t")) == 4 for ln in lines)


def test_text_benchmark_prompts_keep_the_paper_conventions(models, tmp_path: Path) -> None:
    text_data("vqav2", tmp_path)
    bench = make_benchmark("vqav2", data=tmp_path / "vqav2")
    item = bench.items(build_model(tiny_config()))[0]
    sample = item.sample()
    assert sample.conversation[-1].content.endswith(SHORT_ANSWER)
    assert item.forced == "" and item.run_decoders is False


# --------------------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ("Yes", "Yes"),
        ("  two dogs.\nThey are playing.", "two dogs."),
        ("\n\nB", "B"),
        ("red[DET] circle", "red circle"),
        ("No</s>USER: more", "No"),
        ("", ""),
    ],
)
def test_clean_answer(raw: str, answer: str) -> None:
    assert clean_answer(raw) == answer


def test_link_helpers() -> None:
    assert through_last_link("OK, the cat is [GRD].") == "OK, the cat is [GRD]"
    assert link_names("Sure: red circle[DET], square[DET].") == [("det", "red circle"), ("det", "square")]
    assert link_names("person[POSE] nose[POSE]") == [("pose", "person"), ("pose", "nose")]
    assert label_in_answer("circle", "It is a circle.") and not label_in_answer("circle", "circles")
    assert label_in_answer("person", "PERSON")
    with pytest.raises(ValueError, match="no routing token"):
        through_last_link("no link here")


def test_forced_answers_become_prompt_links() -> None:
    model = build_model(tiny_config())
    proc = model.processor
    sample = Sample([], [Turn("user", "Detect circle and square.")])
    plain = proc([sample], add_generation_prompt=True)
    empty = build_batch(proc, [sample], [""])
    assert torch.equal(plain.input_ids, empty.input_ids)  # no forced text == a plain generation prompt
    forced = build_batch(proc, [sample, sample], ["circle[DET], square[DET]", ""])
    assert forced.link_names == ["circle", "square"] and forced.link_sample.tolist() == [0, 0]
    ids = forced.input_ids[0][forced.attention_mask[0].bool()].tolist()
    text = proc.tokenizer.decode(ids[-(4 + 1) :][:1])  # the last link: [DET] then its 4 query slots
    assert text == "[DET]"
    assert forced.attention_mask[1, 0] == 0  # left padding for the shorter prompt


def test_plan_batches_groups_settings_and_ignores_processes() -> None:
    items = [EvalItem(uid=str(i), sample=lambda: None, max_new_tokens=8 if i < 5 else 16) for i in range(9)]
    plan = plan_batches(items, 2)
    assert [[it.uid for it in b] for b in plan] == [["0", "1"], ["2", "3"], ["4"], ["5", "6"], ["7", "8"]]
    with pytest.raises(ValueError):
        plan_batches(items, 0)


# --------------------------------------------------------------------------- perception benchmarks


@pytest.mark.parametrize(
    ("name", "data", "extra"),
    [
        ("coco_det", "coco", []),
        ("coco_seg", "coco", []),
        ("coco_keypoints", "coco", []),
        ("refcoco", "refcoco", ["--split", "train"]),
        ("ade20k", "ade20k", []),
    ],
)
def test_perception_benchmark_through_the_command(name, data, extra, models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, err = run_eval(models["perception"], name, out, "--data", str(FIXTURES / data), *extra)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    preds = _lines(out / "predictions.jsonl")
    assert len(preds) == summary["num_items"] > 0
    sub = out / summary["submission"][0]
    if name.startswith("coco"):
        ann = (
            FIXTURES
            / "coco"
            / "annotations"
            / ("person_keypoints_val2017.json" if name == "coco_keypoints" else "instances_val2017.json")
        )
        assert summary["scores"]["num_detections"] > 0
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(ann))
            dt = gt.loadRes(str(sub))  # the results file is valid COCO results
        assert len(dt.anns) == summary["scores"]["num_detections"]
    elif name == "refcoco":
        rows = json.loads(sub.read_text())
        assert [(r["ref_id"], r["sent_id"]) for r in rows] == [(0, 0), (0, 1)]
        assert all(len(r["bbox"]) == 4 for r in rows)
        assert 0.0 <= summary["scores"]["accuracy"] <= 100.0 and "cIoU" in summary["scores"]
    else:
        png = sub / "ADE_val_00000001.png"
        assert png.is_file()
        assert summary["scores"]["mIoU"] is not None


def test_perception_benchmark_needs_a_decoder(models, tmp_path: Path) -> None:
    rc, err = run_eval(models["text"], "coco_det", tmp_path / "o", "--data", str(FIXTURES / "coco"))
    assert rc == 1 and "needs a decoder for [DET] links" in err


def _oracle_detections(bench: CocoBenchmark, image_id: int, *, shift: float = 0.0) -> list[dict]:
    out = []
    for g in bench._ground_truth(image_id):
        if g.iscrowd:
            continue
        d = {"label": g.label, "score": 0.9, "box": [v + shift for v in g.box]}
        if g.mask is not None:
            d["mask"] = mask_to_rle(g.mask)
        if g.keypoints is not None:
            d["keypoints"] = {k: [x + shift, y, 1.0] for k, (x, y, _) in g.keypoints.items()}
        out.append(d)
    return out


@pytest.mark.parametrize("kind", ["det", "seg", "keypoints"])
def test_coco_scores_match_pycocotools_on_the_submission(kind: str, tmp_path: Path) -> None:
    """Perfect and shifted predictions: the summary's AP is what the official COCOeval gives on the
    written results file against the released annotation file."""
    bench = make_benchmark(f"coco_{'seg' if kind == 'seg' else kind}", data=FIXTURES / "coco")
    assert isinstance(bench, CocoBenchmark)
    items = bench.items(_perception_model())
    for shift in (0.0, 3.0):
        records = {
            it.uid: {"text": "", "detections": _oracle_detections(bench, it.ref, shift=shift)} for it in items
        }
        scores = bench.score(items, records)
        (path,) = bench.write_submission(items, records, tmp_path / f"sub{shift}")
        iou_types = {"det": ["bbox"], "seg": ["bbox", "segm"], "keypoints": ["keypoints"]}[kind]
        for iou in iou_types:
            with contextlib.redirect_stdout(io.StringIO()):
                gt = COCO(str(bench.ann_file))
                ev = COCOeval(gt, gt.loadRes(str(path)), iou)
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            assert scores[f"{iou}/AP"] == pytest.approx(100 * ev.stats[0], abs=0.05), (iou, shift)
        if shift == 0.0:
            assert scores[f"{iou_types[-1]}/AP"] == pytest.approx(100.0)


def test_refcoco_accuracy_and_masks() -> None:
    bench = make_benchmark("refcoco", data=FIXTURES / "refcoco", split="train")
    assert isinstance(bench, RefCocoBenchmark)
    items = bench.items(_perception_model())
    coco = bench.dataset.coco
    anns = {a.id: a for lst in coco.annotations.values() for a in lst}

    def rec(it, dx):
        x, y, w, h = anns[it.ref["ann_id"]].bbox
        return {
            "box": [x + dx, y, x + w + dx, y + h],
            "score": 1.0,
            "mask": mask_to_rle(coco.mask(anns[it.ref["ann_id"]])),
        }

    right = bench.score(items, {it.uid: rec(it, 0.0) for it in items})
    assert right["accuracy"] == 100.0 and right["cIoU"] == pytest.approx(100.0)
    # A box moved by its own width has IoU 0: a miss.
    wrong = bench.score(items, {it.uid: rec(it, 20.0) for it in items})
    assert wrong["accuracy"] == 0.0
    assert items[0].forced == "OK, the lady with the blue shirt is [GRD]"


def test_ade20k_miou_counts_unlabelled_predictions_as_misses() -> None:
    bench = make_benchmark("ade20k", data=FIXTURES / "ade20k")
    assert isinstance(bench, Ade20kBenchmark)
    items = bench.items(_perception_model())
    from visionllm2.data.formats.ade20k import read_semantic_png

    gt = read_semantic_png(items[0].ref, len(bench.classes))
    h, w = gt.shape
    perfect = {
        "size": [w, h],
        "masks": [
            {"label": bench.classes[v - 1], "mask": mask_to_rle(gt == v)} for v in np.unique(gt) if v > 0
        ],
    }
    assert bench.score(items, {items[0].uid: {"semantic": perfect}})["mIoU"] == pytest.approx(100.0)
    # Nothing predicted: every labelled pixel is a miss, so IoU 0 for each present class.
    none = bench.score(items, {items[0].uid: {"semantic": None}})
    assert none["mIoU"] == 0.0 and none["aAcc"] == 0.0


def test_miou_scores_by_hand() -> None:
    # Two classes + "none". Class a: 3 right, 1 left unlabelled; class b: 2 right, 1 called a.
    cm = np.array([[3, 0, 1], [1, 2, 0], [0, 0, 0]])
    s = miou_scores(cm, ["a", "b"])
    assert s["per_class_IoU"]["a"] == pytest.approx(100 * 3 / (4 + 4 - 3))
    assert s["per_class_IoU"]["b"] == pytest.approx(100 * 2 / 3)
    assert s["mIoU"] == pytest.approx(100 * (3 / 5 + 2 / 3) / 2)
    assert s["aAcc"] == pytest.approx(100 * 5 / 7)


# --------------------------------------------------------------------------- world suite


def test_world_suite_through_the_command(models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, err = run_eval(models["perception"], "world", out, "--limit", "1")
    assert rc == 0, err
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert set(scores) == {"test", "heldout_phrasing", "compositional"}
    for split in scores.values():
        assert split["gen"] == "not available (model has no gen decoder)"
        assert split["edit"] == "not available (model has no edit decoder)"
        for task in ("vqa", "pope", "mc", "region_recog"):
            assert 0.0 <= split[task]["accuracy"] <= 100.0 and split[task]["num"] == 1
        assert "box_AP" in split["det"] and "mask_AP" in split["inst_seg"] and "mIoU" in split["sem_seg"]
        assert "keypoint_AP" in split["pose"] and "cIoU" in split["ref_seg"]
    rc, err = run_eval(models["text"], "world", tmp_path / "text", "--limit", "1", "--tasks", "vqa,det,pose")
    assert rc == 0, err
    scores = json.loads((tmp_path / "text" / "summary.json").read_text())["scores"]
    assert scores["test"]["det"] == "not available (model has no det decoder)"
    assert scores["test"]["pose"] == "not available (model has no pose decoder)"
    assert scores["test"]["vqa"]["num"] == 1


def test_world_items_are_deterministic_and_extend_with_the_limit() -> None:
    model = _perception_model()
    a = WorldSuite(limit=2, tasks="vqa,det,grd").items(model)
    b = WorldSuite(limit=3, tasks="vqa,det,grd").items(model)
    assert [it.uid for it in a] == [it.uid for it in WorldSuite(limit=2, tasks="vqa,det,grd").items(model)]
    assert {it.uid for it in a} < {it.uid for it in b}
    by_uid = {it.uid: it for it in b}
    for it in a:
        assert it.sample().conversation == by_uid[it.uid].sample().conversation
        assert it.forced == by_uid[it.uid].forced
    heldout = [it for it in a if it.uid.startswith("heldout_phrasing/vqa/")]
    test = [it for it in a if it.uid.startswith("test/vqa/")]
    assert heldout and test and heldout[0].sample().conversation != test[0].sample().conversation
    # The compositional scenes hold a pair the training scenes never show.
    suite = WorldSuite(limit=1)
    for j in range(4):
        assert suite.scene("compositional", j)[0].pairs() & suite.held
        assert not suite.scene("test", j)[0].pairs() & suite.held


@pytest.mark.parametrize(
    ("vqa_type", "answer", "expected"),
    [
        ("colour", "Blue.", True),
        ("colour", "bottom", False),
        ("shape", "It is a hexagon", False),
        ("shape", "hexagon", True),
        ("count", "Two", True),
        ("count", "none", True),  # VQA normalisation reads "none" as 0
        ("count", "many", False),
        ("position", "top right", True),
        ("relation", "Yes", True),
        ("text", "owl", True),
        ("text", "left", False),
    ],
)
def test_answer_of_kind(vqa_type: str, answer: str, expected: bool) -> None:
    assert answer_of_kind(vqa_type, answer) is expected


def test_world_scores_with_oracle_records() -> None:
    """Records that repeat the ground truth score 100 on every metric: the suite's wiring is right."""
    model = _perception_model()
    suite = WorldSuite(
        limit=2, splits="test", tasks="vqa,pope,mc,region_recog,det,inst_seg,grd,ref_seg,sem_seg,pose"
    )
    items = suite.items(model)
    records = {}
    for it in items:
        c = it.ref
        if c.task == "vqa":
            records[it.uid] = {"answer": c.ref["answer"]}
        elif c.task == "pope":
            records[it.uid] = {"answer": c.ref["label"].capitalize()}
        elif c.task == "mc":
            records[it.uid] = {"answer": c.ref["answer"]}
        elif c.task == "region_recog":
            records[it.uid] = {"answer": f"It is a {c.ref['answer']}."}
        elif c.task in ("det", "inst_seg", "pose"):
            dets = [
                {"label": g.label, "score": 1.0, "box": list(g.box)}
                | ({"mask": mask_to_rle(g.mask)} if g.mask is not None else {})
                | (
                    {"keypoints": {k: [x, y, 1.0] for k, (x, y, _) in g.keypoints.items()}}
                    if g.keypoints
                    else {}
                )
                for g in c.ref["gt"]
            ]
            records[it.uid] = {"detections": dets}
        elif c.task in ("grd", "ref_seg"):
            records[it.uid] = {
                "box": c.ref["box"],
                "mask": None if c.ref["mask"] is None else mask_to_rle(c.ref["mask"]),
            }
        elif c.task == "sem_seg":
            sem = c.ref["semantic"]
            from visionllm2.data.synthetic.world import CATEGORIES

            masks = [
                {"label": CATEGORIES[v - 1], "mask": mask_to_rle(sem == v)} for v in np.unique(sem) if v > 0
            ]
            records[it.uid] = {"semantic": {"size": [sem.shape[1], sem.shape[0]], "masks": masks}}
    s = suite.score(items, records)["test"]
    assert s["vqa"]["accuracy"] == 100.0 and s["mc"]["accuracy"] == 100.0
    assert s["vqa"]["answer_of_kind"] == 100.0
    assert s["pope"]["f1"] == 100.0 and s["region_recog"]["accuracy"] == 100.0
    assert s["grd"]["accuracy"] == 100.0 and s["ref_seg"]["cIoU"] == pytest.approx(100.0)
    assert s["sem_seg"]["mIoU"] == pytest.approx(100.0)
    for task in ("det", "inst_seg"):
        assert s[task]["box_AP"] == pytest.approx(100.0)
    assert s["inst_seg"]["mask_AP"] == pytest.approx(100.0)
    assert s["pose"]["keypoint_AP"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- resume and refusals


def test_resume_skips_finished_items_and_keeps_them(models, tmp_path: Path) -> None:
    text_data("pope", tmp_path)
    data = tmp_path / "pope"
    out = tmp_path / "out"
    rc, err = run_eval(models["text"], "pope", out, "--data", str(data), "--limit", "1")
    assert rc == 0, err
    first = _lines(out / "predictions.jsonl")
    assert len(first) == 3  # --limit is per POPE category
    rc, err = run_eval(models["text"], "pope", out, "--data", str(data))
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_resumed"] == 3 and summary["num_predicted"] == summary["num_items"] - 3
    after = {p["uid"]: p for p in _lines(out / "predictions.jsonl")}
    assert all(after[p["uid"]] == p for p in first)
    # A run killed mid-way leaves a part file, maybe with a torn last line: the whole record is
    # resumed, the torn one is redone.
    preds = _lines(out / "predictions.jsonl")
    (out / "predictions.jsonl").write_text(json.dumps(preds[0]) + "\n")
    kept = {**preds[1], "text": "Yes", "answer": "Yes"}
    (out / "predictions.part-r0-dead.jsonl").write_text(json.dumps(kept) + "\n" + json.dumps(preds[2])[:15])
    assert set(read_predictions(out)) == {preds[0]["uid"], preds[1]["uid"]}
    rc, err = run_eval(models["text"], "pope", out, "--data", str(data))
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_resumed"] == 2 and summary["num_predicted"] == len(preds) - 2
    final = {p["uid"]: p for p in _lines(out / "predictions.jsonl")}
    assert final[kept["uid"]]["text"] == "Yes" and final[preds[2]["uid"]] == preds[2]
    assert not list(out.glob("predictions.part-*"))


def test_refuses_to_mix_runs_unless_overwrite(models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("--data", str(FIXTURES / "refcoco"), "--split", "train")
    assert run_eval(models["perception"], "refcoco", out, *args)[0] == 0
    rc, err = run_eval(models["perception"], "refcoco", out, *args, "--links", "generated")
    assert rc == 1 and "holds predictions of another run" in err
    rc, err = run_eval(models["perception"], "refcoco", out, *args, "--links", "generated", "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["settings"]["links"] == "generated"


def test_command_line_errors(models, tmp_path: Path) -> None:
    rc, err = run_eval(models["text"], "nope", tmp_path / "o", "--data", str(tmp_path))
    assert rc == 1 and "unknown benchmark 'nope'" in err
    text_data("pope", tmp_path)
    rc, err = run_eval(
        models["text"], "pope", tmp_path / "o", "--data", str(tmp_path / "pope"), "--links", "forced"
    )
    assert rc == 1 and "takes no option(s) links" in err
    rc, err = run_eval(models["text"], "pope", tmp_path / "o")
    assert rc == 1 and "needs --data" in err
    assert sorted(BENCHMARK_NAMES) == sorted(BENCHMARKS)


# --------------------------------------------------------------------------- sharding


def test_two_processes_give_the_same_results_as_one(models, tmp_path: Path) -> None:
    """torchrun with 2 processes vs one process: byte-identical predictions and identical scores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    common = ["eval", "--model", str(models["perception"]), "--benchmark", "world", "--limit", "2"]
    common += ["--tasks", "vqa,pope,det,inst_seg", "--splits", "test,compositional", "--batch-size", "3"]
    common += ["--device", "cpu", "--no-progress"]
    one = subprocess.run(
        [sys.executable, "-m", "visionllm2.cli", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "visionllm2.cli", *common, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    a, b = tmp_path / "one", tmp_path / "two"
    assert (a / "predictions.jsonl").read_bytes() == (b / "predictions.jsonl").read_bytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["scores"] == sb["scores"] and sb["processes"] == 2 and sa["processes"] == 1
    assert sb["num_items"] == 16 and not list(b.glob("predictions.part-*"))
    assert sum(sb["items_per_process"]) == 16 and min(sb["items_per_process"]) > 0  # both did a share


def test_world_generations_do_not_depend_on_the_batch_or_the_tasks_run_before(tmp_path: Path) -> None:
    """The runner seeds each item's sampling noise from its uid: the same text-to-image item gives the
    same image alone in a batch of one and batched after other tasks' items."""
    torch.manual_seed(0)
    cfg = tiny_config(
        gen=DecoderConfig(type="diffusion", link_dim=32, kwargs={**TINY_UNET, "mode": "generate"})
    )
    cfg.families["gen"].decoder = "gen"
    build_model(cfg).save_pretrained(tmp_path / "model")
    common = ("--benchmark", "world", "--splits", "test", "--limit", "3")
    images = {}
    for name, args in {
        "alone": ("--tasks", "gen", "--batch-size", "1"),
        "mixed": ("--tasks", "vqa,gen"),
    }.items():
        rc, err = run_eval(tmp_path / "model", common[1], tmp_path / name, *common[2:], *args)
        assert rc == 0, err
        records = [r for r in _lines(tmp_path / name / "predictions.jsonl") if "/gen/" in r["uid"]]
        images[name] = {
            r["uid"]: np.asarray(Image.open(tmp_path / name / r["image"]), np.int16) for r in records
        }
    assert len(images["alone"]) == 3 and images["alone"].keys() == images["mixed"].keys()
    for uid, image in images["alone"].items():
        # Up to the batch-size-dependent rounding of the conv kernels (a level of 255 at most).
        assert np.abs(image - images["mixed"][uid]).max() <= 1, uid
    first, second = list(images["alone"].values())[:2]
    assert np.abs(first - second).max() > 10  # different items, different noise


def test_world_generation_and_editing_are_scored_by_the_verifier(tmp_path: Path) -> None:
    """gen / edit need diffusion decoders; a stand-in model that claims them lets the suite build its
    items. Images equal to the targets score 100; an edit that changes nothing scores 0."""
    from types import SimpleNamespace

    from visionllm2.config import FamilyConfig
    from visionllm2.inference.results import GeneratedImage, Result

    families = {
        f: FamilyConfig(token=f"[{f.upper()}]", num_queries=4, decoder="stub") for f in ("gen", "edit")
    }
    stand_in = SimpleNamespace(config=SimpleNamespace(families=families), region_encoder=None)
    suite = WorldSuite(limit=3, splits="test", tasks="gen,edit")
    items = suite.items(stand_in)
    assert [it.uid.split("/")[1] for it in items] == ["gen"] * 3 + ["edit"] * 3
    exact, unchanged = {}, {}
    for it in items:
        sample = it.sample()
        if it.ref.task == "gen":
            # The forced answer restates the request, as the training answers do.
            assert sample.images == [] and it.forced.startswith("Here is ") and it.forced.endswith(" [GEN]")
            assert it.forced[len("Here is ") : -len(" [GEN]")] in sample.conversation[0].content
            _, rendered = suite.scene("test", int(it.uid.split("/")[2]))
            # The tiny decoder's resolution, not the scene's: the suite upsamples before verifying (at
            # 32 px as is, the template fit misses most shapes even in the exact rendering).
            target = rendered.image.resize((32, 32))
            source = target
        else:
            assert len(sample.images) == 1 and it.forced == "Here is the edited image [EDIT]"
            target, source = it.ref.ref["target"], sample.images[0]
        exact[it.uid] = suite.record(
            it, Result(text="", items=[GeneratedImage(target, it.ref.task)]), out_dir=tmp_path
        )
        unchanged[it.uid] = suite.record(
            it, Result(text="", items=[GeneratedImage(source, it.ref.task)]), out_dir=tmp_path
        )
        assert (tmp_path / exact[it.uid]["image"]).is_file()
    s = suite.score(items, exact)["test"]
    assert s["gen"]["verifier_accuracy"] >= 85.0 and s["gen"]["no_image"] == 0
    assert s["gen"]["colour_recall"] >= s["gen"]["colour_kind_recall"] >= s["gen"]["verifier_accuracy"]
    assert s["gen"]["colour_recall"] >= s["gen"]["colour_cell_recall"] >= s["gen"]["verifier_accuracy"]
    assert s["edit"]["verifier_accuracy"] == 100.0 and s["edit"]["exact"] == 100.0
    assert s["edit"]["change_rate"] == 100.0 and s["edit"]["outside_error"] == 0.0
    # Returning the source keeps the unedited shapes but makes no change: it scores nothing.
    kept = suite.score(items, unchanged)["test"]["edit"]
    assert kept["verifier_accuracy"] == 0.0 and kept["change_rate"] == 0.0 and kept["shape_accuracy"] > 0.0
    # A blank canvas holds no requested colour.
    blank = {
        it.uid: suite.record(
            it,
            Result(text="", items=[GeneratedImage(Image.new("RGB", (32, 32), "white"), "gen")]),
            out_dir=tmp_path,
        )
        for it in items
        if it.ref.task == "gen"
    }
    gen_items = [it for it in items if it.ref.task == "gen"]
    assert suite.score(gen_items, blank)["test"]["gen"]["colour_recall"] == 0.0
    # The exact renderings against another item's request: some colours recur across scenes,
    # most layouts do not.
    g = s["gen"]
    assert g["colour_cell_recall_other_request"] < g["colour_cell_recall"] >= 85.0
    for key in ("changed", "found"):  # a resumed run recorded by an older version
        old_style = {uid: {**r, "verifier": {**r["verifier"]}} for uid, r in exact.items()}
        for r in old_style.values():
            r["verifier"].pop(key, None)
        with pytest.raises(ValueError, match="--overwrite"):
            suite.score(items, old_style)
    nothing = {it.uid: suite.record(it, Result(text=""), out_dir=tmp_path) for it in items}
    s = suite.score(items, nothing)["test"]
    assert s["edit"]["verifier_accuracy"] == 0.0 and s["edit"]["no_image"] == 3


def test_refuses_to_resume_with_other_weights_at_the_same_path(models, tmp_path: Path) -> None:
    # A model folder retrained (or a checkpoint copied) in place: its predictions must not be resumed.
    folder = tmp_path / "model"
    shutil.copytree(models["text"], folder)
    text_data("pope", tmp_path)
    out, args = tmp_path / "out", ("--data", str(tmp_path / "pope"), "--limit", "1")
    assert run_eval(folder, "pope", out, *args)[0] == 0
    digest = json.loads((out / "run.json").read_text())["weights"]
    assert digest == weights_digest(VisionLLM2Model.from_pretrained(folder))
    model = VisionLLM2Model.from_pretrained(folder)
    with torch.no_grad():
        model.llm.get_input_embeddings().weight[5, 0] += 1e-3
    model.save_pretrained(folder)
    rc, err = run_eval(folder, "pope", out, *args)
    assert rc == 1 and "holds predictions of another run" in err
