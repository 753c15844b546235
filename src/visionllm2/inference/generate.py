"""Batched generation with a KV cache that appends super-link queries after routing tokens,
then runs every decoder once on all captured links."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from visionllm2.data.processor import Batch
from visionllm2.inference.cache import preallocated_cache
from visionllm2.inference.results import Result

if TYPE_CHECKING:
    from visionllm2.modeling.model import VisionLLM2Model


_STOP_TAIL = 64  # stop strings are matched against the decoded last tokens only


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # end tokens are suppressed before this many tokens
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    use_cache: bool = True
    seed: int | None = None  # for sampling
    run_decoders: bool = True
    # decoder name -> options handed to it in Links.extras (e.g. {"gen": {"seed": 0,
    # "num_inference_steps": 25, "guidance_scale": 2.0}}). A list "seed" gives one seed per
    # sample of the batch; each decoder gets those of the samples it serves.
    decoder_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class CapturedLink:
    family: int  # index into the model's families
    name: str
    states: torch.Tensor  # (K, D) last-layer hidden states at the link's queries
    generated: bool  # False for links already in the prompt


@dataclass
class _SampleState:
    tokens: list[int] = field(default_factory=list)
    links: list[CapturedLink] = field(default_factory=list)
    done: bool = False


def _pick(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: VisionLLM2Model,
    batch: Batch,
    generation: GenerationConfig | None = None,
    *,
    vision_features: torch.Tensor | None = None,
    on_token: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> list[Result]:
    """Generate an answer for every sample of a (left-padded) batch built with
    ``processor(samples, add_generation_prompt=True)``.

    When a sample emits a routing token, that token and the family's K queries go through the
    LLM in the same step (samples emitting plain tokens get masked padding in front of theirs),
    the states at the queries are captured, and generation continues from the last query, as
    in training. Without a cache the whole sequence is recomputed each step (same tokens and
    states; used to test the cache).

    ``vision_features`` (I, N, Dv) skips the vision tower (a predictor's cache);
    ``on_token(sample, token_id)`` is called for every generated token (streaming).
    """
    cfg = generation or GenerationConfig()
    if overrides:
        cfg = GenerationConfig(**{**cfg.__dict__, **overrides})
    proc = model.processor
    device = batch.input_ids.device
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    B = batch.input_ids.shape[0]
    eos = {proc.tokenizer.eos_token_id}
    end_token = proc.template.assistant_suffix.strip()
    end_id = proc.tokenizer.convert_tokens_to_ids(end_token) if end_token else None
    if end_id is not None and end_id != proc.tokenizer.unk_token_id:
        eos.add(end_id)
    stops = tuple(cfg.stop_strings)

    embeds = model.embed(batch, vision_features)  # (B, T, D)
    mask = batch.attention_mask
    # Room for every new token plus one link's queries; more links reallocate (doubling).
    reserve = cfg.max_new_tokens + max(model.super_link.num_queries, default=0)
    cache = preallocated_cache(model.llm.config, reserve) if cfg.use_cache else None
    hidden = model.run_llm(embeds, mask, cache=cache)  # (B, T, D)
    states = [_SampleState() for _ in range(B)]
    prompt_states = model.link_states(hidden, batch) if batch.link_family.numel() else None
    for i, (b, f) in enumerate(zip(batch.link_sample.tolist(), batch.link_family.tolist())):
        k = model.super_link.num_queries[f]
        states[b].links.append(CapturedLink(f, batch.link_names[i], prompt_states[i, :k], generated=False))
    last = hidden[:, -1]  # (B, D)
    embed_tokens = model.llm.get_input_embeddings()

    for step in range(cfg.max_new_tokens):
        logits = model.logits(last)  # (B, V)
        if step < cfg.min_new_tokens:
            logits[:, list(eos)] = float("-inf")
        tokens = _pick(logits, cfg, generator)  # (B,)
        token_list = tokens.tolist()
        active = [not st.done for st in states]  # samples that take this step's token
        families = [-1] * B
        for b, st in enumerate(states):
            if not active[b]:
                continue
            tok = token_list[b]
            st.tokens.append(tok)
            if on_token is not None:
                on_token(b, tok)
            families[b] = proc.routing_ids.get(tok, -1)
            stopped = bool(stops) and any(proc.decode(st.tokens[-_STOP_TAIL:]).endswith(s) for s in stops)
            st.done = tok in eos or stopped or step == cfg.max_new_tokens - 1
        if all(st.done for st in states) and max(families) < 0:
            break  # nothing left whose states we still need
        token_embeds = embed_tokens(tokens).to(embeds.dtype)  # (B, D)
        widths = [
            model.super_link.num_queries[f] + 1 if f >= 0 else int(active[b]) for b, f in enumerate(families)
        ]
        width = max(widths)
        if width == 1:  # the common step: one token per active sample
            new = token_embeds[:, None]  # (B, 1, D)
            new_mask = torch.tensor(active, dtype=mask.dtype, device=mask.device)[:, None]
        else:
            # Right-align every sample's new positions; the gap in front is masked padding.
            new = embeds.new_zeros(B, width, embeds.shape[-1])
            new_mask = mask.new_zeros(B, width)
            for b, f in enumerate(families):
                if not widths[b]:
                    continue
                new[b, width - widths[b]] = token_embeds[b]
                if f >= 0:
                    new[b, width - widths[b] + 1 :] = model.super_link.queries[
                        model.super_link.family_names[f]
                    ]
                new_mask[b, width - widths[b] :] = 1
        mask = torch.cat([mask, new_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if cache is not None:
            h = model.run_llm(new, mask, positions[:, -width:], cache=cache)  # (B, width, D)
        else:
            embeds = torch.cat([embeds, new], dim=1)
            h = model.run_llm(embeds, mask, positions)[:, -width:]
        for b, fam in enumerate(families):
            if fam >= 0:
                k = model.super_link.num_queries[fam]
                name = proc.name_before(proc.decode(states[b].tokens[:-1]))
                states[b].links.append(CapturedLink(fam, name, h[b, width - k :], generated=True))
        last = h[:, -1]
        if all(st.done for st in states):
            break

    results = []
    for st in states:
        text = proc.decode(st.tokens)
        for s in stops:
            if text.endswith(s):
                text = text[: -len(s)]
                break
        links = [{"family": model.super_link.family_names[c.family], "name": c.name} for c in st.links]
        results.append(Result(text=text, links=links, token_ids=st.tokens))
    if cfg.run_decoders:
        _run_decoders(model, batch, states, results, cfg.decoder_options)
    return results


def _run_decoders(
    model: VisionLLM2Model,
    batch: Batch,
    states: list[_SampleState],
    results: list[Result],
    options: dict[str, dict[str, Any]],
) -> None:
    """Each decoder runs once on every captured link routed to it; items go to their sample."""
    captured = [(b, c) for b, st in enumerate(states) for c in st.links]
    if not captured:
        return
    kmax = max(c.states.shape[0] for _, c in captured)
    padded = captured[0][1].states.new_zeros(len(captured), kmax, captured[0][1].states.shape[-1])
    for i, (_, c) in enumerate(captured):
        padded[i, : c.states.shape[0]] = c.states
    device = padded.device
    sample = torch.tensor([b for b, _ in captured], device=device)
    family = torch.tensor([c.family for _, c in captured], device=device)
    names = [c.name for _, c in captured]
    groups = model.decoder_links(padded, sample, family, names, batch.image_sizes)
    unknown = sorted(set(options) - set(model.decoders))
    if unknown:
        raise ValueError(
            f"decoder_options name unknown decoder(s) {unknown}; the model has {sorted(model.decoders)}"
        )
    for dec, (links, _idx, samples) in groups.items():
        extras = dict(options.get(dec, {}))
        if isinstance(extras.get("seed"), (list, tuple)):
            if len(extras["seed"]) != len(states):
                raise ValueError(
                    f"decoder_options[{dec!r}]['seed'] lists {len(extras['seed'])} seeds for a batch of "
                    f"{len(states)}: give one per sample, or one int"
                )
            extras["seed"] = [extras["seed"][b] for b in samples.tolist()]
        links.extras.update(extras)
        pixels = batch.decoder_pixels.get(dec)
        decoder = model.decoders[dec]
        outputs = decoder(links, None if pixels is None else pixels[samples])
        for s, b in enumerate(samples.tolist()):
            mine = links.of_sample(s)
            size = None
            if batch.image_sizes is not None and int(batch.image_sizes[b, 0]) > 0:
                size = (int(batch.image_sizes[b, 0]), int(batch.image_sizes[b, 1]))
            results[b].items.extend(
                decoder.postprocess(
                    outputs[s],
                    names=[links.names[i] for i in mine],
                    families=[links.families[i] for i in mine],
                    image_size=size,
                )
            )
