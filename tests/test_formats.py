"""Dataset formats: real-schema fixtures load, the synthetic writer round-trips through
pycocotools and our loaders, writes are atomic, malformed files name file, record and field."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from visionllm2.data.formats.ade20k import Ade20kDataset, read_class_file, read_semantic_png
from visionllm2.data.formats.coco import CocoDataset, CocoFile
from visionllm2.data.formats.common import FormatError, atomic_write_json
from visionllm2.data.formats.llava import LlavaDataset, sample_to_llava
from visionllm2.data.formats.pairs import CaptionPairs, EditPairs
from visionllm2.data.formats.refcoco import RefCocoDataset
from visionllm2.data.synthetic.cli import register, synthesize
from visionllm2.data.synthetic.tasks import scene_seed
from visionllm2.data.synthetic.world import CATEGORIES, WorldConfig, generate_scene, heldout_pairs, render

FIX = Path(__file__).parent / "fixtures"
COCO_DIR = FIX / "coco"


# -- real-schema fixtures ------------------------------------------------------------------------


def test_coco_instances_fixture_matches_pycocotools():
    path = COCO_DIR / "annotations" / "instances_val2017.json"
    ours = CocoFile(path)
    ref = COCO(str(path))
    for anns in ours.annotations.values():
        for a in anns:
            # Polygons, compressed RLE and uncompressed crowd RLE all decode like pycocotools.
            assert np.array_equal(ours.mask(a), ref.annToMask(ref.anns[a.id]).astype(bool))
    ds = CocoDataset(annotation_file=path, image_root=COCO_DIR / "val2017", task="inst_seg")
    assert len(ds) == 2
    s = ds[0]
    names = [n for n in ds.names if f"{n}[SEG]" in s.conversation[1].content]
    assert {"person", "bicycle"} <= set(names)
    for t, name in zip(s.targets, _link_names(s), strict=True):
        n = {"person": 1, "bicycle": 1}.get(name, 0)
        assert t.boxes.shape == (n, 4) and t.masks.shape == (n, 30, 40)
    person = s.targets[_link_names(s).index("person")]
    assert np.allclose(person.boxes[0], [4, 6, 15, 25])
    # The crowd region of image 285 is not a target; the non-crowd bear is.
    bear = ds[1]
    t = bear.targets[_link_names(bear).index("bear")]
    assert t.boxes.shape == (1, 4) and np.allclose(t.boxes[0], [3, 3, 28, 20])


def _link_names(sample):
    from visionllm2.data.processor import link_name

    text = sample.conversation[1].content
    for tok in ("[DET]", "[SEG]", "[POSE]"):
        if tok in text:
            return [link_name(p) for p in text.split(tok)[:-1]]
    return []


def test_coco_keypoints_and_captions_fixtures():
    ds = CocoDataset(
        annotation_file=COCO_DIR / "annotations" / "person_keypoints_val2017.json",
        image_root=COCO_DIR / "val2017",
        task="pose",
    )
    s = ds[0]
    assert s.conversation[1].content.count("[POSE]") == 18 and s.targets[1:] == [None] * 17
    kp = s.targets[0].keypoints
    assert kp.shape == (2, 17, 3)
    raw = json.loads((COCO_DIR / "annotations" / "person_keypoints_val2017.json").read_text())
    assert np.array_equal(kp[0].reshape(-1), np.asarray(raw["annotations"][0]["keypoints"], np.float32))
    assert (kp[1, :, 2] == 0).all()  # num_keypoints 0: an instance without labelled joints
    caps = CocoDataset(
        annotation_file=COCO_DIR / "annotations" / "captions_val2017.json",
        image_root=COCO_DIR / "val2017",
        task="caption",
    )
    assert len(caps) == 3
    assert caps[2].meta["answer"].startswith("A big burly grizzly bear")
    gen = CocoDataset(
        annotation_file=COCO_DIR / "annotations" / "captions_val2017.json",
        image_root=COCO_DIR / "val2017",
        task="gen",
    )
    assert gen[0].targets[0].image.size == (40, 30) and gen[0].images == []
    with pytest.raises(ValueError, match="captions file"):
        CocoDataset(
            annotation_file=COCO_DIR / "annotations" / "instances_val2017.json",
            image_root=".",
            task="caption",
        )


def test_refcoco_fixture():
    kw = dict(refs_file=FIX / "refcoco" / "refs.json", instances_file=FIX / "refcoco" / "instances.json")
    root = FIX / "refcoco" / "images" / "train2014"
    train = RefCocoDataset(**kw, image_root=root, split="train")
    assert len(train) == 2  # one sample per sentence
    s = train[1]
    assert "lady on left" in s.conversation[0].content
    assert np.allclose(s.targets[0].boxes, [[2, 4, 13, 28]])
    seg = RefCocoDataset(**kw, image_root=root, split="testA", task="ref_seg")
    assert len(seg) == 1 and seg[0].targets[0].masks.shape == (1, 32, 40)
    with pytest.raises(ValueError, match="no split 'val'"):
        RefCocoDataset(**kw, image_root=root, split="val")
    with pytest.raises(ValueError, match="pickle"):
        RefCocoDataset(refs_file="refs(unc).p", instances_file=kw["instances_file"], image_root=root)


def test_ade20k_fixture_and_both_class_lists():
    ade = FIX / "ade20k" / "ADEChallengeData2016"
    names = read_class_file(ade / "objectInfo150.txt")
    assert names == ["wall", "building", "sky", "floor", "tree"]
    assert read_class_file(FIX / "ade20k" / "object150_info.csv") == names
    ds = Ade20kDataset(
        image_dir=ade / "images" / "validation",
        annotation_dir=ade / "annotations" / "validation",
        class_file=ade / "objectInfo150.txt",
    )
    s = ds[0]
    sem = read_semantic_png(ade / "annotations" / "validation" / "ADE_val_00000001.png", 5)
    asked = _link_names(s)
    assert {"sky", "building", "tree", "floor"} <= set(asked)
    for name, t in zip(asked, s.targets, strict=True):
        assert t.semantic
        want = sem == names.index(name) + 1
        if want.any():
            assert np.array_equal(t.masks[0], want)
        else:
            assert t.masks.shape[0] == 0 and t.boxes.shape == (0, 4)


def test_llava_fixture():
    ds = LlavaDataset(json_file=FIX / "llava" / "llava_instruct_sample.json")
    assert len(ds) == 3
    a = ds[0]
    assert [t.role for t in a.conversation] == ["user", "assistant"] * 2
    assert len(a.images) == 1 and a.images[0].size == (32, 24)
    assert ds[1].conversation[0].content.endswith("<image>")  # LLaVA-Pretrain puts it last
    assert ds[2].images == [] and ds[2].meta["id"] == "text_only_0"
    rec = sample_to_llava(a, record_id="000000033471", image="coco/train2017/000000033471.jpg")
    raw = json.loads((FIX / "llava" / "llava_instruct_sample.json").read_text())[0]
    assert rec == raw


def test_pairs_fixtures():
    caps = CaptionPairs(jsonl_file=FIX / "pairs" / "metadata.jsonl")
    assert len(caps) == 2 and caps[0].task == "gen" and "a red circle" in caps[0].conversation[0].content
    c2 = CaptionPairs(jsonl_file=FIX / "pairs" / "metadata.jsonl", task="caption")
    assert c2[1].meta["answer"] == "a blue square on a grey background"
    edits = EditPairs(jsonl_file=FIX / "pairs" / "edits.jsonl")
    s = edits[0]
    assert s.task == "edit" and "make the circle blue" in s.conversation[0].content
    assert np.asarray(s.targets[0].image)[8, 8, 2] > 150  # the edited circle is blue
    assert edits[1].images[0].size == (16, 16)  # "input_image" alias


# -- synthetic writer round trip ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    manifest = synthesize(out=out, num=10, seed=4, heldout_num=3, progress=False)
    return out, manifest


def test_synth_writes_every_format_and_split(synth):
    out, manifest = synth
    assert manifest["splits"] == {"train": 8, "val": 1, "test": 1, "heldout": 3}
    for split in manifest["splits"]:
        for rel in (
            f"coco/instances_{split}.json",
            f"coco/captions_{split}.json",
            f"llava/{split}.json",
            f"pairs/captions_{split}.jsonl",
            f"pairs/edits_{split}.jsonl",
        ):
            assert (out / rel).is_file(), rel
    assert (out / "refcoco" / "refs.json").is_file() and (out / "ade" / "objectInfo.txt").is_file()
    assert not list(out.rglob("*.tmp")), "no temporary file may be left behind"
    assert json.loads((out / "manifest.json").read_text())["seed"] == 4


def test_synth_coco_round_trips_through_pycocotools(synth):
    out, _ = synth
    coco = COCO(str(out / "coco" / "instances_train.json"))
    cats = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert len(cats["person"]["keypoints"]) == 17 and len(cats["dog"]["keypoints"]) == 17
    assert [1, 2] in cats["dog"]["skeleton"] and [16, 14] in cats["person"]["skeleton"]
    config = WorldConfig()
    held = heldout_pairs(4)
    for k, img_id in enumerate(sorted(coco.getImgIds())):
        scene = generate_scene(scene_seed(4, k), config, exclude_pairs=held)
        r = render(scene)
        on_disk = np.asarray(Image.open(out / "images" / "train" / coco.imgs[img_id]["file_name"]))
        assert np.array_equal(on_disk, np.asarray(r.image))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert len(anns) == len(r.objects)
        for a, o in zip(anns, r.objects, strict=True):
            assert coco.cats[a["category_id"]]["name"] == o.label
            assert np.array_equal(coco.annToMask(a).astype(bool), o.mask)
            x, y, w, h = a["bbox"]
            assert np.allclose([x, y, x + w, y + h], o.box)
            if o.keypoints is not None:
                kp = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
                assert np.array_equal(kp[:, 2], o.keypoints[:, 2])
                assert np.allclose(kp[:, :2], o.keypoints[:, :2], atol=0.01)
                assert a["num_keypoints"] == int((o.keypoints[:, 2] > 0).sum())
    ds = CocoDataset(
        annotation_file=out / "coco" / "instances_train.json", image_root=out / "images" / "train"
    )
    assert len(ds) == 8 and ds[0].task == "det"


def test_synth_heldout_split_is_compositional(synth):
    out, manifest = synth
    held = {tuple(p) for p in manifest["heldout_pairs"]}

    def pairs(split):
        data = json.loads((out / "coco" / f"instances_{split}.json").read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        per_image: dict[int, set] = {}
        for a in data["annotations"]:
            if "colour" in a.get("attributes", {}):
                per_image.setdefault(a["image_id"], set()).add(
                    (names[a["category_id"]], a["attributes"]["colour"])
                )
        return per_image

    for split in ("train", "val", "test"):
        assert all(not p & held for p in pairs(split).values())
    heldout = pairs("heldout")
    assert len(heldout) == 3 and all(p & held for p in heldout.values())
    edits = [json.loads(x) for x in (out / "pairs" / "edits_train.jsonl").read_text().splitlines()]
    for e in edits:
        assert not any(f"{c} {k}" in e["edited_prompt"] for k, c in held)


def test_synth_other_formats_load(synth):
    out, _ = synth
    images = out / "images"
    refs = RefCocoDataset(
        refs_file=out / "refcoco" / "refs.json",
        instances_file=out / "refcoco" / "instances.json",
        image_root=images,
    )
    assert len(refs) >= 10 and refs[0].targets[0].boxes.shape == (1, 4)
    names = read_class_file(out / "ade" / "objectInfo.txt")
    assert names == list(CATEGORIES)
    ade = Ade20kDataset(
        image_dir=images / "val",
        annotation_dir=out / "ade" / "annotations" / "val",
        class_file=out / "ade" / "objectInfo.txt",
    )
    scene = generate_scene(scene_seed(4, 8), WorldConfig(), exclude_pairs=heldout_pairs(4))
    assert np.array_equal(
        read_semantic_png(out / "ade" / "annotations" / "val" / "val_000000.png", 10), render(scene).semantic
    )
    assert ade[0].task == "sem_seg"
    llava = LlavaDataset(json_file=out / "llava" / "test.json", image_root=images)
    assert len(llava) == 1 and len(llava[0].conversation) >= 2
    caps = CaptionPairs(jsonl_file=out / "pairs" / "captions_val.jsonl", image_root=images)
    assert caps[0].targets[0].image.size == (128, 128)
    edits = EditPairs(jsonl_file=out / "pairs" / "edits_train.jsonl", image_root=images)
    assert len(edits) >= 6
    e = edits[0]
    assert not np.array_equal(np.asarray(e.images[0]), np.asarray(e.targets[0].image))


def test_cli_register_and_run(tmp_path):
    parser = argparse.ArgumentParser(prog="visionllm2")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(
        ["data", "synth", "--out", str(tmp_path / "d"), "--num", "3", "--seed", "1", "--no-progress"]
    )
    assert args.func(args) == 0
    assert (tmp_path / "d" / "manifest.json").is_file()
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["splits"]["train"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synth", "--num", "3"])  # --out is required


# -- atomic writes ---------------------------------------------------------------------------------


def test_atomic_write_leaves_old_file_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})

    class Boom(RuntimeError):
        pass

    def fail(*a, **k):
        raise Boom

    monkeypatch.setattr("visionllm2.data.formats.common.os.replace", fail)
    with pytest.raises(Boom):
        atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]
    with pytest.raises(Boom):
        atomic_write_json(tmp_path / "new.json", {"v": 3})
    assert not (tmp_path / "new.json").exists()


def test_interrupted_synth_leaves_no_manifest(tmp_path, monkeypatch):
    import visionllm2.data.synthetic.cli as cli

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_llava", stop)
    with pytest.raises(KeyboardInterrupt):
        synthesize(out=tmp_path, num=3, seed=0, progress=False)
    assert not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))


# -- malformed files name file, record and field ------------------------------------------------


def _coco_copy(tmp_path, mutate):
    data = json.loads((COCO_DIR / "annotations" / "instances_val2017.json").read_text())
    mutate(data)
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize(
    "mutate,record,field",
    [
        (lambda d: d["annotations"][1].pop("bbox"), "annotations[1] (id=2002)", "bbox"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id=2001)", "bbox"),
        (lambda d: d["annotations"][0].update(category_id=999), "annotations[0] (id=2001)", "category_id"),
        (lambda d: d["annotations"][0].update(image_id=5), "annotations[0] (id=2001)", "image_id"),
        (
            lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3]]),
            "annotations[0] (id=2001)",
            "segmentation",
        ),
        (
            lambda d: d["annotations"][1]["segmentation"].update(size=[3, 3]),
            "annotations[1] (id=2002)",
            "segmentation",
        ),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2]), "annotations[0] (id=2001)", "keypoints"),
        (lambda d: d["images"][1].update(width="32"), "images[1] (id=285)", "width"),
        (lambda d: d["categories"][0].pop("name"), "categories[0] (id=1)", "name"),
    ],
)
def test_malformed_coco_names_file_record_and_field(tmp_path, mutate, record, field):
    p = _coco_copy(tmp_path, mutate)
    with pytest.raises(FormatError) as e:
        CocoFile(p)
    msg = str(e.value)
    assert str(p) in msg and record in msg and repr(field) in msg, msg


def test_malformed_json_and_missing_images(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(FormatError, match=r"bad.json.*line 1"):
        CocoFile(bad)
    root = tmp_path / "imgs"
    root.mkdir()
    ds = CocoDataset(annotation_file=COCO_DIR / "annotations" / "instances_val2017.json", image_root=root)
    with pytest.raises(
        FormatError, match=r"instances_val2017.json, record image id 139, field 'file_name'.*does not exist"
    ):
        ds[0]


def test_malformed_refs_ade_llava_pairs(tmp_path):
    refs = json.loads((FIX / "refcoco" / "refs.json").read_text())
    refs[1]["ann_id"] = 42
    p = tmp_path / "refs.json"
    p.write_text(json.dumps(refs))
    with pytest.raises(FormatError, match=r"refs.json, record #1 \(ref_id=1\), field 'ann_id'"):
        RefCocoDataset(refs_file=p, instances_file=FIX / "refcoco" / "instances.json", image_root=tmp_path)

    ade = tmp_path / "ade"
    shutil.copytree(FIX / "ade20k" / "ADEChallengeData2016", ade)
    png = ade / "annotations" / "validation" / "ADE_val_00000001.png"
    m = np.asarray(Image.open(png)).copy()
    m[0, 0] = 77
    Image.fromarray(m, "L").save(png)
    ds = Ade20kDataset(
        image_dir=ade / "images" / "validation",
        annotation_dir=ade / "annotations" / "validation",
        class_file=ade / "objectInfo150.txt",
    )
    with pytest.raises(FormatError, match=r"ADE_val_00000001.png: class index 77"):
        ds[0]
    png.unlink()
    with pytest.raises(FormatError, match="no annotation"):
        Ade20kDataset(
            image_dir=ade / "images" / "validation",
            annotation_dir=ade / "annotations" / "validation",
            class_file=ade / "objectInfo150.txt",
        )
    (tmp_path / "cls.txt").write_text("Idx\tName\n1\twall\n3\tsky\n")
    with pytest.raises(FormatError, match=r"cls.txt, record line 3, field 'Idx'"):
        read_class_file(tmp_path / "cls.txt")

    rec = json.loads((FIX / "llava" / "llava_instruct_sample.json").read_text())
    rec[0]["conversations"][1]["from"] = "bot"
    p = tmp_path / "llava.json"
    p.write_text(json.dumps(rec))
    with pytest.raises(
        FormatError, match=r"llava.json, record #0 \(id='000000033471'\) conversations\[1\], field 'from'"
    ):
        LlavaDataset(json_file=p)
    rec[0]["conversations"][1]["from"] = "gpt"
    rec[0]["conversations"][2]["value"] = "<image> again?"
    p.write_text(json.dumps(rec))
    with pytest.raises(FormatError, match=r"2 <image> token\(s\) in the text but 1 image"):
        LlavaDataset(json_file=p)

    p = tmp_path / "edits.jsonl"
    p.write_text('{"original_image": "a.png", "edited_image": "b.png"}\n')
    with pytest.raises(FormatError, match=r"edits.jsonl, record line 1, field 'edit_prompt'"):
        EditPairs(jsonl_file=p)
    p.write_text('{"original_image": "a.png", "edit_prompt": "x", "edited_image": "b.png"}\nnot json\n')
    with pytest.raises(FormatError, match=r"edits.jsonl, record line 2"):
        EditPairs(jsonl_file=p)
    p.write_text('{"original_image": "a.png", "edit_prompt": "x", "edited_image": "b.png"}\n')
    with pytest.raises(FormatError, match=r"record line 1, field 'original_image'.*does not exist"):
        EditPairs(jsonl_file=p)[0]
