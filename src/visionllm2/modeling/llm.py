"""The language model: any transformers causal LM, plus vocabulary growth for added tokens."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from visionllm2.config import LLMConfig


def build_llm(
    cfg: LLMConfig, *, vocab_size: int, new_token_ids: list[int] = (), load_weights: bool = True
) -> PreTrainedModel:
    """Build the causal LM.

    ``cfg.path`` (a local folder) loads a real model when ``load_weights``; otherwise the
    architecture comes from ``cfg.hf_config`` (saved with a model) or a Llama of the sizes in
    ``cfg``. The rows of ``new_token_ids`` (tokens VisionLLM v2 added to the tokenizer) start
    at the mean of the older rows. ``cfg.hf_config`` is filled in so the model can be rebuilt
    without the folder.
    """
    if cfg.path is not None and load_weights:
        path = Path(cfg.path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"llm.path {cfg.path!r} is not a local folder; point it at a folder with config.json and "
                "weights (for a GGUF file, load it once with transformers and save_pretrained it)"
            )
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        if cfg.hf_config is not None:
            hf = AutoConfig.for_model(**cfg.hf_config)
        elif cfg.path is not None:
            hf = AutoConfig.from_pretrained(cfg.path)
        else:
            hf = LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=cfg.hidden_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
                intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_position_embeddings,
                rope_theta=cfg.rope_theta,
                tie_word_embeddings=cfg.tie_word_embeddings,
            )
        model = AutoModelForCausalLM.from_config(hf)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if new_token_ids:
        init_new_rows(model, list(new_token_ids))
    cfg.hf_config = model.config.to_diff_dict()
    return model


@torch.no_grad()
def init_new_rows(model: PreTrainedModel, ids: list[int]) -> None:
    """Set the embedding (and output) rows of the added tokens to the mean of the rows before
    them: the paper's choice, so a new token starts as an "average word" rather than noise."""
    first = min(ids)
    heads = (model.get_input_embeddings(), model.get_output_embeddings())
    for emb in {id(e): e for e in heads if e is not None}.values():
        emb.weight[ids] = emb.weight[:first].mean(dim=0, keepdim=True)
