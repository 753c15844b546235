"""The built-in world tokenizer: what it was trained on, and what it encodes."""

from __future__ import annotations

import json

from conftest import make_tiny
from visionllm2.data.tokenizer import (
    WORLD_TOKENIZER,
    load_tokenizer,
    train_world_tokenizer,
    world_corpus,
)
from visionllm2.modeling.builder import from_pretrained, save_pretrained


def test_shipped_world_tokenizer_is_its_recipe():
    """The packaged file is what the recipe trains now; after a change to the world's text,
    rebuild it with ``python -m visionllm2.data.tokenizer``."""
    rebuilt = json.loads(train_world_tokenizer(world_corpus()).backend_tokenizer.to_str())
    shipped = json.loads(WORLD_TOKENIZER.read_text())
    assert rebuilt["model"]["vocab"] == shipped["model"]["vocab"]
    assert rebuilt["model"]["merges"] == shipped["model"]["merges"]


def test_world_words_are_whole_tokens_and_any_text_round_trips():
    tok = load_tokenizer("world")
    prompt = "Draw a large dotted orange circle at the top left."
    pieces = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    words = prompt.rstrip(".").split(" ")  # each world word one token, "Ġ" marking its space
    assert pieces == [words[0], *("Ġ" + w for w in words[1:]), "."]
    assert len(load_tokenizer("byte")(prompt).input_ids) == len(prompt)
    for text in ["Zebras graze near 42 baobabs; ünïcode → ok {x}", "\n\t  spaces  "]:
        ids = tok(text).input_ids
        assert tok.decode(ids) == text


def test_model_with_world_tokenizer_saves_and_loads(tmp_path):
    model = make_tiny(**{"llm.tokenizer": "world"})
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    text = "<image>\nWhat colour is the star? [DET] Draw a cat [GEN]"
    assert loaded.processor.tokenizer(text).input_ids == model.processor.tokenizer(text).input_ids
    assert len(loaded.processor.tokenizer) == len(model.processor.tokenizer)
