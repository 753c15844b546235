"""The ``visionllm2`` command: chat, predict (COCO results), serve, and one-line user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools.coco import COCO

from surface_models import save_det_model, shapes_image
from visionllm2.cli import build_parser, main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_det_model(tmp_path_factory.mktemp("cli") / "det-model")


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "shapes.png"
    shapes_image().save(path)
    return path


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("visionllm2: error: ") and "Traceback" not in err, err
    return lines[0]


def test_every_subsystem_registers_its_commands():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"chat", "predict", "serve", "train", "data"} <= set(sub.choices)


def test_chat_prints_answer_saves_png_and_json(model_dir, image_path, tmp_path, capsys):
    out_png, out_json = tmp_path / "drawn.png", tmp_path / "r.json"
    rc = main(
        [
            "chat",
            "--image",
            str(image_path),
            "Detect the circles.",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "3",
            "--out",
            str(out_png),
            "--json",
            str(out_json),
            "--box",
            "10,10,40,40",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and captured.out.strip() == "[DET][DET][DET]"
    drawn = Image.open(out_png)
    assert drawn.size == (96, 72)
    assert np.abs(
        np.asarray(drawn.convert("RGB"), int) - np.asarray(Image.open(image_path).convert("RGB"), int)
    ).sum()
    data = json.loads(out_json.read_text())
    assert len(data["detections"]) == 3 and data["text"] == "[DET][DET][DET]"

    rc = main(
        [
            "chat",
            "--image",
            str(image_path),
            "Detect.",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "2",
            "--json",
            "--no-draw",
        ]
    )
    assert rc == 0 and len(json.loads(capsys.readouterr().out)["detections"]) == 2


def test_chat_errors_are_one_line(model_dir, image_path, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    line = one_line_error(capsys, main(["chat", "--image", str(bad), "hi", "--model", str(model_dir)]))
    assert "not a readable image" in line and "bad.jpg" in line
    line = one_line_error(
        capsys, main(["chat", "--image", str(tmp_path / "nope.png"), "hi", "--model", str(model_dir)])
    )
    assert "does not exist" in line
    line = one_line_error(
        capsys, main(["chat", "--image", str(image_path), "hi", "--model", "no-such-model"])
    )
    assert "unknown model 'no-such-model'" in line
    line = one_line_error(capsys, main(["chat", "hi", "--model", str(tmp_path)]))
    assert "not a visionllm2 model folder" in line
    with pytest.raises(SystemExit):  # argparse's own usage error for a malformed point
        main(["chat", "--image", str(image_path), "hi", "--point", "1,2,3"])


def test_predict_writes_coco_results_with_progress(model_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        shapes_image(seed=i).save(folder / name)
    out = tmp_path / "out" / "results.json"
    rc = main(
        [
            "predict",
            "--images",
            str(folder),
            "--recursive",
            "--prompt",
            "Find: circle[DET] and more.",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "2",
            "--batch-size",
            "2",
            "--output",
            str(out),
            "--render-dir",
            str(tmp_path / "drawn"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "3/3" in captured.err  # the progress bar ran to the end
    results = json.loads(out.read_text())
    index = json.loads(out.with_name("results.index.json").read_text())
    assert [im["file_name"] for im in index["images"]] == ["a.png", "b.jpg", "sub/c.png"]
    assert [im["id"] for im in index["images"]] == [1, 2, 3]
    # Every image: the prompt's "circle" link plus two generated (unnamed) links.
    assert len(results) == 9
    names = {c["id"]: c["name"] for c in index["categories"]}
    assert sorted(names.values()) == ["", "circle"]
    for r in results:
        assert r["image_id"] in (1, 2, 3) and r["category_id"] in names
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 96 and 0 <= y <= 72
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 3

    # With ground truth, its ids are used and unknown labels are left out (and said so).
    gt = {
        "images": [
            {"id": 40 + i, "file_name": n, "width": 96, "height": 72}
            for i, n in enumerate(["a.png", "b.jpg"])
        ],
        "categories": [{"id": 7, "name": "circle"}],
        "annotations": [
            {"id": 1, "image_id": 40, "category_id": 7, "bbox": [10, 20, 30, 30], "area": 900, "iscrowd": 0}
        ],
    }
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    rc = main(
        [
            "predict",
            "--images",
            str(folder),
            "--prompt",
            "Find: circle[DET].",
            "--model",
            str(model_dir),
            "--max-new-tokens",
            "1",
            "--annotations",
            str(gt_path),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "left out" in err
    results = json.loads(out.read_text())
    assert sorted(r["image_id"] for r in results) == [40, 41] and {r["category_id"] for r in results} == {7}
    coco = COCO(str(gt_path))
    assert len(coco.loadRes(str(out)).getAnnIds()) == 2  # loadRes-ready


def test_predict_unreadable_images(model_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shapes_image().save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but truncated")
    args = [
        "predict",
        "--images",
        str(folder),
        "--prompt",
        "Detect.",
        "--model",
        str(model_dir),
        "--max-new-tokens",
        "1",
        "--output",
        str(tmp_path / "r.json"),
        "--no-progress",
    ]
    line = one_line_error(capsys, main(args))
    assert "unreadable image" in line and "broken.png" in line and "--skip-unreadable" in line
    assert main([*args, "--skip-unreadable"]) == 0
    assert "skipping unreadable image" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "r.json").read_text())) == 1
    line = one_line_error(capsys, main(["predict", "--images", str(tmp_path / "none"), "--prompt", "x"]))
    assert "is not a folder" in line


def test_serve_builds_the_app_from_flags(model_dir, tmp_path, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    rc = main(
        [
            "serve",
            "--model",
            str(model_dir),
            "--port",
            "8765",
            "--allow-dir",
            str(tmp_path),
            "--max-tokens",
            "16",
        ]
    )
    assert rc == 0 and seen["host"] == "127.0.0.1" and seen["port"] == 8765
    settings = seen["app"].state.settings
    assert settings.model_id == "det-model" and settings.allowed_dirs == (tmp_path.resolve(),)
    assert settings.max_tokens == 16 and settings.default_max_tokens == 16
    with TestClient(seen["app"]) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "det-model"
    capsys.readouterr()
    line = one_line_error(capsys, main(["serve", "--model", "no-such-model"]))
    assert "unknown model" in line
    line = one_line_error(
        capsys, main(["serve", "--model", str(model_dir), "--allow-dir", str(tmp_path / "x")])
    )
    assert "is not a folder" in line


def test_demo_runs_every_task_in_one_batch(model_dir, tmp_path, monkeypatch, capsys):
    from visionllm2.inference.predictor import VisionLLM2

    batches = []
    real_run = VisionLLM2.run
    monkeypatch.setattr(
        VisionLLM2,
        "run",
        lambda self, samples, *a, **k: batches.append(len(samples)) or real_run(self, samples, *a, **k),
    )
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--tasks",
            "caption,det,region_caption",
            "--max-new-tokens",
            "2",
        ]
    )
    assert rc == 0 and batches == [3]
    report = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in report] == ["caption", "det", "region_caption"]
    assert all(r["reference"] and r["answer"] == "[DET][DET]" for r in report)
    assert "<region>" in report[2]["question"]
    for name in ("scene.png", "det.png", "det_truth.png", "region_caption.png"):
        assert Image.open(out / name).size == Image.open(out / "scene.png").size
    capsys.readouterr()
    line = one_line_error(capsys, main(["demo", "--model", str(model_dir), "--tasks", "det,juggling"]))
    assert "juggling" in line
