"""Tokenizers: built-in byte-level and world ones for tiny models, any local one at real scale,
plus the tokens VisionLLM v2 adds (``<image>``, ``<region>``, routing tokens)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN, ROUTING_TOKENS, atomic_write_text

# The world tokenizer shipped with the package, and the recipe it was trained with.
WORLD_TOKENIZER = Path(__file__).with_name("world_tokenizer.json")
WORLD_VOCAB_SIZE = 1024
WORLD_CORPUS_SAMPLES = 3000
_SPECIAL = re.compile("|".join(re.escape(t) for t in (IMAGE_TOKEN, REGION_TOKEN, *ROUTING_TOKENS.values())))


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens and ``</s>`` / ``<pad>``: needs no files and no training, which suits the
    tiny world whose answers are short."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def world_corpus(num_samples: int = WORLD_CORPUS_SAMPLES, seed: int = 0) -> list[str]:
    """The messages of ``num_samples`` training samples of the world (every task, training
    phrasings only: the held-out phrasings stay unseen), without the special tokens."""
    from visionllm2.training.data import world_dataset

    data = world_dataset(num=num_samples, seed=seed, heldout_seed=0)
    texts = []
    for i in range(num_samples):
        sample = data[i]
        if sample.meta.get("phrasing") != "train":
            raise ValueError(f"world sample {i} has phrasing {sample.meta.get('phrasing')!r}, not 'train'")
        texts += [" ".join(_SPECIAL.split(m.content)).strip() for m in sample.conversation]
    return texts


def train_world_tokenizer(texts: list[str], vocab_size: int = WORLD_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on world text: the world's words become single tokens (a prompt is
    ~4x shorter than in bytes), and any other text still encodes, byte by byte at worst."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def world_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped world tokenizer (``python -m visionllm2.data.tokenizer`` rebuilds it)."""
    return PreTrainedTokenizerFast(tokenizer_file=str(WORLD_TOKENIZER), eos_token="</s>", pad_token="<pad>")


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """``"byte"`` or ``"world"`` for a built-in tokenizer, else a local folder with tokenizer files."""
    if spec == "byte":
        return byte_level_tokenizer()
    if spec == "world":
        return world_tokenizer()
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {spec!r} is neither 'byte', 'world' nor a local folder; pass a folder holding "
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


def main() -> None:
    p = argparse.ArgumentParser(description="Rebuild the shipped world tokenizer from its recipe.")
    p.add_argument("--out", default=str(WORLD_TOKENIZER), help="tokenizer.json to write")
    args = p.parse_args()
    tok = train_world_tokenizer(world_corpus())
    atomic_write_text(args.out, tok.backend_tokenizer.to_str(pretty=True))
    print(f"wrote {args.out}: {len(tok)} tokens")


if __name__ == "__main__":
    main()
