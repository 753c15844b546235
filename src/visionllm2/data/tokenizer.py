"""Tokenizers: a built-in byte-level one for tiny models, any local one at real scale, plus
the tokens VisionLLM v2 adds (``<image>``, ``<region>``, routing tokens)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens and ``</s>`` / ``<pad>``: needs no files and no training, which suits the
    tiny world whose answers are short."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """``"byte"`` for the built-in tokenizer, else a local folder with tokenizer files."""
    if spec == "byte":
        return byte_level_tokenizer()
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {spec!r} is neither 'byte' nor a local folder; pass a folder holding "
            "tokenizer.json / tokenizer_config.json (models are never downloaded at run time)"
        )
    return AutoTokenizer.from_pretrained(path)


def add_visionllm2_tokens(tokenizer: PreTrainedTokenizerBase, routing_tokens: list[str]) -> list[str]:
    """Add ``<image>``, ``<region>`` and the routing tokens as special tokens (never split),
    and a pad token if missing. Returns the tokens that were new."""
    wanted = [IMAGE_TOKEN, REGION_TOKEN, *routing_tokens]
    vocab = tokenizer.get_vocab()
    new = [t for t in wanted if t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return new
