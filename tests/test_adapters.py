"""lmms-eval and VLMEvalKit adapters, driven with fake request objects (neither package is installed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from conftest import make_tiny
from surface_models import family_biased
from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation import adapters
from visionllm2.evaluation.adapters import LmmsEvalModel, VLMEvalKitModel, continuation_logprobs
from visionllm2.inference.predictor import VisionLLM2

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@dataclass
class FakeInstance:
    """The attributes lmms-eval's ``Instance`` gives a model: ``args``, ``task_name``, ``doc_id``."""

    args: tuple
    task_name: str = "toy"
    doc_id: int = 0


@pytest.fixture(scope="module")
def predictor() -> VisionLLM2:
    return VisionLLM2(model=make_tiny(3), device="cpu")


def _docs() -> dict[int, dict[str, Any]]:
    return {
        0: {"q": "What colour is it?", "image": Image.new("RGB", (20, 16), (200, 30, 30))},
        1: {"q": "Is there a cat?", "image": Image.new("RGB", (18, 18), (30, 200, 30))},
        2: {"q": "Describe nothing.", "image": None},
    }


def _lmms(predictor: VisionLLM2, batch_size: int = 2) -> LmmsEvalModel:
    m = LmmsEvalModel(predictor=predictor, batch_size=batch_size, max_new_tokens=6)
    m.task_dict = {"toy": {"test": _docs()}}
    return m


def _gen_request(doc_id: int, gen_kwargs: dict[str, Any]) -> FakeInstance:
    def doc_to_visual(doc):
        return [doc["image"]] if doc["image"] is not None else []

    return FakeInstance(
        (_docs()[doc_id]["q"], gen_kwargs, doc_to_visual, doc_id, "toy", "test"), doc_id=doc_id
    )


def test_generate_until_matches_the_predictor_and_keeps_request_order(predictor: VisionLLM2) -> None:
    kwargs = {"max_new_tokens": 6, "until": ["\n\n"]}
    reqs = [_gen_request(i, dict(kwargs)) for i in (2, 0, 1)]
    got = _lmms(predictor).generate_until(reqs)
    one_by_one = _lmms(predictor, batch_size=1).generate_until(reqs)
    assert got == one_by_one and len(got) == 3 and all(isinstance(t, str) for t in got)
    for req, text in zip(reqs, got):
        doc = _docs()[req.args[3]]
        images = [doc["image"]] if doc["image"] is not None else []
        prompt = ("<image>\n" if images else "") + doc["q"]
        direct = predictor.run([Sample(images, [Turn("user", prompt)])], {"max_new_tokens": 6})[0].plain_text
        assert text == direct.split("\n\n")[0]


def test_generate_until_cuts_at_until_and_groups_kwargs(predictor: VisionLLM2) -> None:
    full = _lmms(predictor).generate_until([_gen_request(0, {"max_new_tokens": 6})])[0]
    assert len(full) >= 2
    stop = full[1]
    cut = _lmms(predictor).generate_until([_gen_request(0, {"max_new_tokens": 6, "until": [stop]})])[0]
    assert cut == full.split(stop)[0] and stop not in cut
    mixed = _lmms(predictor).generate_until(
        [_gen_request(0, {"max_new_tokens": 6}), _gen_request(0, {"max_new_tokens": 1})]
    )
    assert mixed[0] == full and len(mixed[1]) <= len(full)


def _teacher_forced_reference(predictor: VisionLLM2, sample: Sample, continuation: str) -> float:
    """Independent route: the training processor (answer turn with its end marker, right padding, one
    sample), full-vocabulary log-softmax at the first len(continuation) labelled positions."""
    model = predictor.model
    proc = model.processor
    n = len(proc.tokenizer.encode(continuation, add_special_tokens=False))
    full = Sample(sample.images, [*sample.conversation, Turn("assistant", continuation)])
    batch = proc([full]).to("cpu")
    with torch.no_grad():
        logp = model.logits(model.run_llm(model.embed(batch), batch.attention_mask)).log_softmax(-1)[0]
    labelled = (batch.labels[0] != -100).nonzero()[:, 0][:n]
    return float(sum(logp[p - 1, batch.labels[0, p]] for p in labelled))


def test_loglikelihood_is_teacher_forced_scoring(predictor: VisionLLM2) -> None:
    m = _lmms(predictor)
    reqs = []
    for i, target in ((0, "red"), (1, "Yes, a cat."), (2, "x")):
        reqs.append(
            FakeInstance(
                (_docs()[i]["q"], target, lambda d: [d["image"]] if d["image"] else [], i, "toy", "test")
            )
        )
    # doc_to_target may also be a function of the document.
    reqs.append(
        FakeInstance((_docs()[0]["q"], lambda d: d["q"][:4], lambda d: [d["image"]], 0, "toy", "test"))
    )
    got = m.loglikelihood(reqs)
    assert len(got) == 4 and all(lp < 0 and isinstance(g, bool) for lp, g in got)
    for req, (lp, _) in zip(reqs, got):
        context, target, to_visual, doc_id, _, _ = req.args
        doc = _docs()[doc_id]
        images = [v for v in to_visual(doc) if v is not None]
        cont = target if isinstance(target, str) else target(doc)
        sample = Sample(images, [Turn("user", ("<image>\n" if images else "") + context)])
        assert lp == pytest.approx(_teacher_forced_reference(predictor, sample, cont), abs=1e-4)
    ((alone, flag),) = m.loglikelihood(reqs[:1])  # batching does not change a score
    assert alone == pytest.approx(got[0][0], abs=1e-4) and flag == got[0][1]


def test_loglikelihood_is_greedy_flag() -> None:
    # A model biased to emit [DET] at every step: "[DET]" is its greedy continuation, "[SEG]" is not.
    pred = VisionLLM2(model=family_biased(make_tiny(0)).eval(), device="cpu")
    samples = [Sample([], [Turn("user", "Find the circles.")])] * 2
    (lp_det, greedy_det), (lp_seg, greedy_seg) = continuation_logprobs(pred, samples, ["[DET]", "[SEG]"])
    assert greedy_det and not greedy_seg and lp_det > lp_seg
    assert continuation_logprobs(pred, samples[:1], [""]) == [(0.0, True)]


def test_lmms_model_args_and_unsupported_parts(predictor: VisionLLM2) -> None:
    with pytest.raises(ValueError, match="unknown visionllm2 model_args"):
        LmmsEvalModel(predictor=predictor, conv_template="vicuna")
    m = LmmsEvalModel(
        predictor=predictor, batch_size="3", max_new_tokens="5"
    )  # strings, as --model_args gives
    assert m.batch_size == 3 and m.rank == 0 and m.world_size == 1
    with pytest.raises(NotImplementedError, match="multi-round"):
        m.generate_until_multi_round([])
    video = FakeInstance(("q", {}, lambda d: ["clip.mp4"], 0, "toy", "test"))
    m.task_dict = {"toy": {"test": _docs()}}
    with pytest.raises(ValueError, match="images only"):
        m.generate_until([video])
    with pytest.raises(KeyError, match="task_dict"):
        m.generate_until([FakeInstance(("q", {}, lambda d: [], 9, "toy", "test"))])
    with pytest.raises(ImportError, match="lmms-eval"):
        adapters.register_with_lmms_eval()


# --------------------------------------------------------------------------- VLMEvalKit


@pytest.fixture()
def captured(predictor: VisionLLM2, monkeypatch):
    """The samples the adapter hands to the predictor."""
    seen: list[Sample] = []
    real = predictor.run

    def run(samples, generation=None, **kw):
        seen.extend(samples)
        return real(samples, generation, **kw)

    monkeypatch.setattr(predictor, "run", run)
    return seen


def test_vlmevalkit_generate_accepts_every_message_form(predictor, captured, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (12, 10), (10, 20, 200)).save(img)
    m = VLMEvalKitModel(predictor=predictor, max_new_tokens=5)
    a = m.generate([{"type": "image", "value": str(img)}, {"type": "text", "value": "What is it?"}])
    b = m.generate([str(img), "What is it?"])  # list of strings: an image path is an image
    assert a == b and isinstance(a, str)
    assert captured[0].conversation[0].content == "<image>\nWhat is it?" and captured[0].images[0].size == (
        12,
        10,
    )
    m.generate(
        [
            {"type": "text", "value": "Before"},
            {"type": "image", "value": str(img)},
            {"type": "text", "value": "after"},
        ]
    )
    assert captured[-1].conversation[0].content == "Before\n<image>\nafter"  # INTERLEAVE keeps the order
    m.generate("Just text.")
    assert captured[-1].images == [] and captured[-1].conversation[0].content == "Just text."
    direct = predictor.run([Sample([], [Turn("user", "Just text.")])], {"max_new_tokens": 5})[0].plain_text
    assert m.generate({"type": "text", "value": "Just text."}) == direct
    with pytest.raises(ValueError, match="type 'text' or 'image'"):
        m.generate([{"type": "video", "value": "x.mp4"}])
    with pytest.raises(ValueError):
        m.generate([])


def test_vlmevalkit_chat_and_custom_prompt(predictor, captured, monkeypatch, tmp_path: Path) -> None:
    img = tmp_path / "b.png"
    Image.new("RGB", (10, 10), (200, 200, 20)).save(img)
    m = VLMEvalKitModel(predictor=predictor, max_new_tokens=4, custom_prompt=True)
    m.chat_inner(
        [
            {
                "role": "user",
                "content": [{"type": "image", "value": str(img)}, {"type": "text", "value": "Hi?"}],
            },
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "And now?"},
        ]
    )
    conv = captured[-1].conversation
    assert [t.role for t in conv] == ["user", "assistant", "user"] and conv[0].content == "<image>\nHi?"
    with pytest.raises(ValueError, match="roles"):
        m.chat_inner([{"role": "system", "content": "x"}])
    assert not m.use_custom_prompt("MMBench_DEV_EN")  # without VLMEvalKit the dataset type is unknown
    monkeypatch.setattr(adapters, "_dataset_type", lambda d: "MCQ")
    m.set_dump_image(lambda line: str(img))
    assert m.use_custom_prompt("MMBench_DEV_EN")
    line = {"question": "Which colour?", "A": "red", "B": "yellow", "C": float("nan"), "hint": "Look."}
    msg = m.build_prompt(line, "MMBench_DEV_EN")
    assert msg[0] == {"type": "image", "value": str(img)}
    assert msg[1]["value"] == (
        "Look.\nWhich colour?\nA. red\nB. yellow\n"
        "Answer with the option's letter from the given choices directly."
    )
    monkeypatch.setattr(adapters, "_dataset_type", lambda d: "Y/N")
    assert m.build_prompt({"question": "Is it red?"}, "MME")[1]["value"] == (
        "Is it red?\nAnswer the question using a single word or phrase."
    )
