"""Adapters that let lmms-eval and VLMEvalKit drive a VisionLLM v2 model through their model interfaces.

Neither package is a dependency: the classes follow their conventions by duck typing and, when the
package is installed, subclass its base class so its type checks pass too.

lmms-eval (``lmms`` interface)::

    # run_lmms_eval.py — makes "visionllm2" a model name, then runs lmms-eval's own command line
    from visionllm2.evaluation.adapters import register_with_lmms_eval
    register_with_lmms_eval()
    from lmms_eval.__main__ import cli_evaluate
    cli_evaluate()

    python run_lmms_eval.py --model visionllm2 --model_args pretrained=/path/to/model --tasks mme,pope

``generate_until`` answers each request greedily (or sampled, as its ``gen_kwargs`` say) and cuts the
answer at the first ``until`` string; ``loglikelihood`` is implemented properly by teacher forcing: the
continuation is appended as the assistant's answer and the sum of its tokens' log-probabilities is
returned with whether greedy decoding would have produced it. ``generate_until_multi_round`` is not
supported (NotImplementedError): lmms-eval only uses it for a few multi-round tasks.

VLMEvalKit (``BaseModel`` convention)::

    # in vlmeval/config.py
    from functools import partial
    from visionllm2.evaluation.adapters import VLMEvalKitModel
    supported_VLM["visionllm2"] = partial(VLMEvalKitModel, model_path="/path/to/model")

``generate(message, dataset=None)`` takes VLMEvalKit's message (a string, a ``{"type", "value"}`` dict, or
a list of either; images as paths or PIL images) and returns the answer text; images become ``<image>``
where they appear (``INTERLEAVE = True``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from visionllm2.config import IMAGE_TOKEN
from visionllm2.data.formats.benchmarks import SHORT_ANSWER, choice_prompt
from visionllm2.data.processor import IGNORE_INDEX
from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation.runner import build_batch
from visionllm2.inference.generate import GenerationConfig
from visionllm2.inference.predictor import VisionLLM2, load_image

try:  # lmms-eval's abstract model class, when installed
    from lmms_eval.api.model import lmms as _LmmsBase  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _LmmsBase = object

try:  # VLMEvalKit's model base class, when installed
    from vlmeval.vlm.base import BaseModel as _VLMEvalBase  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _VLMEvalBase = object

__all__ = [
    "continuation_logprobs",
    "LmmsEvalModel",
    "register_with_lmms_eval",
    "VLMEvalKitModel",
]


def _predictor(
    predictor: VisionLLM2 | None, path: str | os.PathLike, device: str, max_new_tokens: int
) -> VisionLLM2:
    """The injected predictor, or the model at ``path`` loaded with greedy defaults."""
    if predictor is not None:
        if not isinstance(predictor, VisionLLM2):
            raise TypeError(f"predictor must be a VisionLLM2, got {type(predictor).__name__}")
        return predictor
    return VisionLLM2.from_pretrained(
        path, device=device, generation=GenerationConfig(max_new_tokens=max_new_tokens)
    )


def _images(visuals: Any) -> list[Image.Image]:
    """lmms-eval visuals (a list, possibly nested or with ``None``) -> RGB images; videos and audio are
    refused with a clear error."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    out: list[Image.Image] = []
    for v in visuals:
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            out += _images(v)
        elif isinstance(v, (Image.Image, bytes)) or (isinstance(v, (str, os.PathLike)) and _is_image_file(v)):
            out.append(load_image(v))
        else:
            raise ValueError(
                f"VisionLLM v2 takes images only; got a {type(v).__name__} visual ({str(v)[:80]!r}), e.g. a "
                "video or audio clip"
            )
    return out


def _is_image_file(path: str | os.PathLike) -> bool:
    return (
        Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
        and Path(path).is_file()
    )


def _with_image_tokens(text: str, n_images: int) -> str:
    """LLaVA's rule: a prompt that does not place its images gets one ``<image>`` line per image first."""
    if n_images and IMAGE_TOKEN not in text:
        return "\n".join([IMAGE_TOKEN] * n_images) + "\n" + text
    return text


@torch.no_grad()
def continuation_logprobs(
    predictor: VisionLLM2, samples: Sequence[Sample], continuations: Sequence[str]
) -> list[tuple[float, bool]]:
    """Teacher-forced scoring: for each sample (ending with the user's turn) the sum of log-probabilities
    of ``continuation`` as the start of the assistant's answer, and whether greedy decoding would produce
    exactly it. Routing tokens in a continuation are scored; their query slots are not (they are never
    predicted), and no end-of-turn token is added.
    """
    model = predictor.model
    batch = build_batch(model.processor, samples, continuations).to(predictor.device, predictor.dtype)
    hidden = model.run_llm(model.embed(batch), batch.attention_mask)  # (B, T, D)
    assert batch.labels is not None
    targets = batch.labels[:, 1:]  # (B, T-1): the token each position predicts
    keep = targets != IGNORE_INDEX
    B = targets.shape[0]
    total = torch.zeros(B, dtype=torch.float64)
    greedy = torch.ones(B, dtype=torch.bool)
    if keep.any():
        logp = F.log_softmax(model.logits(hidden[:, :-1][keep]).float(), dim=-1)  # (n, V)
        want = targets[keep]
        tok = logp.gather(1, want[:, None])[:, 0].double().cpu()  # (n,)
        hit = (logp.argmax(-1) == want).cpu()
        rows = keep.nonzero()[:, 0].cpu()
        total.index_add_(0, rows, tok)
        # A sample is greedy when none of its tokens misses: count misses per row.
        misses = torch.zeros(B, dtype=torch.long).index_add_(0, rows, (~hit).long())
        greedy = misses == 0
    return [(float(t), bool(g)) for t, g in zip(total, greedy)]


# --------------------------------------------------------------------------- lmms-eval


class LmmsEvalModel(_LmmsBase):  # type: ignore[misc,valid-type]
    """lmms-eval's ``lmms`` interface over :class:`~visionllm2.inference.predictor.VisionLLM2`.

    Constructor arguments come from ``--model_args`` as strings: ``pretrained`` (a bundled name or a
    model folder), ``device`` (``auto``), ``batch_size``, ``max_new_tokens`` (default for requests whose
    ``gen_kwargs`` give none). ``predictor`` injects a ready model (tests, notebooks).
    """

    is_simple = True

    def __init__(
        self,
        *,
        pretrained: str = "tiny",
        device: str = "auto",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        predictor: VisionLLM2 | None = None,
        **kwargs: Any,
    ) -> None:
        if _LmmsBase is not object:
            super().__init__()
        else:
            self.task_dict: dict[str, Any] = {}
        if kwargs:
            raise ValueError(
                f"unknown visionllm2 model_args {sorted(kwargs)}; known: pretrained, device, "
                "batch_size, max_new_tokens"
            )
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if self.batch_size_per_gpu < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        self.predictor = _predictor(predictor, pretrained, device, self.max_new_tokens)
        dist = torch.distributed
        on = dist.is_available() and dist.is_initialized()
        self._rank = dist.get_rank() if on else 0
        self._world_size = dist.get_world_size() if on else 1

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as e:
            raise KeyError(
                f"document {doc_id!r} of task {task!r} split {split!r} is not in task_dict (lmms-eval fills "
                "task_dict before calling the model)"
            ) from e

    def _sample(self, context: str, visuals: Any) -> Sample:
        images = _images(visuals)
        return Sample(images=images, conversation=[Turn("user", _with_image_tokens(context, len(images)))])

    def _generation(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kw.pop("temperature", 0) or 0)
        cfg: dict[str, Any] = {
            "max_new_tokens": int(kw.pop("max_new_tokens", self.max_new_tokens) or self.max_new_tokens),
            "do_sample": bool(kw.pop("do_sample", False)) or temperature > 0,
            "stop_strings": tuple(u for u in until if u),
        }
        if cfg["do_sample"]:
            cfg["temperature"] = temperature or 1.0
        top_p = kw.pop("top_p", None)
        if top_p is not None and cfg["do_sample"]:
            cfg["top_p"] = float(top_p)
        return cfg, until

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        """``requests[i].args`` = ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; returns
        the answers in request order (routing tokens removed, cut at the first ``until`` string)."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            gen_kwargs = req.args[1]
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        for idx in groups.values():
            cfg, until = self._generation(requests[idx[0]].args[1])
            for start in range(0, len(idx), self.batch_size_per_gpu):
                chunk = idx[start : start + self.batch_size_per_gpu]
                samples = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    samples.append(self._sample(context, doc_to_visual(self._doc(task, split, doc_id))))
                for i, r in zip(chunk, self.predictor.run(samples, cfg)):
                    text = r.plain_text
                    for u in until:
                        if u:
                            text = text.split(u)[0]
                    out[i] = text
        return [t if t is not None else "" for t in out]

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """``requests[i].args`` = ``(context, doc_to_target, doc_to_visual, doc_id, task, split)``; returns
        ``(sum of the continuation's token log-probabilities, is_greedy)`` per request."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch_size_per_gpu):
            chunk = requests[start : start + self.batch_size_per_gpu]
            samples, continuations = [], []
            for req in chunk:
                context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
                doc = self._doc(task, split, doc_id)
                continuations.append(doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc))
                samples.append(self._sample(context, doc_to_visual(doc)))
            out += continuation_logprobs(self.predictor, samples, continuations)
        return out

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(
            "visionllm2 does not implement lmms-eval's multi-round generation; run single-round tasks, or "
            "drive multi-turn chats through VisionLLM2.chat(history=...)"
        )


def register_with_lmms_eval(name: str = "visionllm2") -> None:
    """Make ``--model visionllm2`` resolve to :class:`LmmsEvalModel` in an installed lmms-eval (both its
    ``AVAILABLE_MODELS`` table and, in versions that have it, its ``register_model`` registry)."""
    try:
        import lmms_eval.models as models  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError("register_with_lmms_eval needs lmms-eval installed (pip install lmms-eval)") from e
    table = getattr(models, "AVAILABLE_MODELS", None)
    if isinstance(table, dict):
        table[name] = f"{__name__}.LmmsEvalModel"
    try:
        from lmms_eval.api.registry import register_model  # type: ignore[import-not-found]
    except ImportError:
        return
    with contextlib.suppress(AssertionError, ValueError):  # already registered under this name
        register_model(name)(LmmsEvalModel)


# --------------------------------------------------------------------------- VLMEvalKit


class VLMEvalKitModel(_VLMEvalBase):  # type: ignore[misc,valid-type]
    """VLMEvalKit's model convention: ``generate(message, dataset=None) -> str`` calling
    ``generate_inner``; ``chat_inner`` for multi-turn messages.

    ``custom_prompt=True`` makes multiple-choice and yes/no datasets use the paper's prompts
    (:func:`~visionllm2.data.formats.benchmarks.choice_prompt`, the short-answer suffix) through
    ``use_custom_prompt`` / ``build_prompt``, as VLMEvalKit's LLaVA does; it needs VLMEvalKit installed
    to know a dataset's type.
    """

    INTERLEAVE = True
    allowed_types = ["text", "image"]
    is_api = False

    def __init__(
        self,
        *,
        model_path: str = "tiny",
        device: str = "auto",
        max_new_tokens: int = 128,
        custom_prompt: bool = False,
        predictor: VisionLLM2 | None = None,
        **generation: Any,
    ) -> None:
        self.max_new_tokens = int(max_new_tokens)
        self.predictor = _predictor(predictor, model_path, device, self.max_new_tokens)
        self.generation = {"max_new_tokens": self.max_new_tokens, **generation}
        self.custom_prompt = custom_prompt
        self.dump_image_func: Callable[[Any], Any] | None = None

    # -- VLMEvalKit plumbing ------------------------------------------------------------------
    def set_dump_image(self, dump_image_func: Callable[[Any], Any]) -> None:
        self.dump_image_func = dump_image_func

    def dump_image(self, line: Any, dataset: str | None = None) -> list[str]:
        if self.dump_image_func is None:
            raise RuntimeError("VLMEvalKit sets dump_image via set_dump_image before building prompts")
        paths = self.dump_image_func(line)
        return [paths] if isinstance(paths, str) else list(paths)

    def use_custom_prompt(self, dataset: str | None) -> bool:
        return self.custom_prompt and _dataset_type(dataset) in ("MCQ", "Y/N")

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict[str, str]]:
        """The paper's prompt for one dataset row: lettered options + the letter instruction (MCQ), or the
        question + the short-answer suffix (yes/no), after the row's images."""
        images = [{"type": "image", "value": p} for p in self.dump_image(line, dataset)]
        question = str(line["question"])
        if _dataset_type(dataset) == "MCQ":
            options = [str(line[c]) for c in "ABCDEFGHIJ" if c in line and not _missing(line[c])]
            hint = None if "hint" not in line or _missing(line["hint"]) else str(line["hint"])
            text = choice_prompt(question, options, hint=hint, with_image=False)
        else:
            text = f"{question}\n{SHORT_ANSWER}"
        return [*images, {"type": "text", "value": text}]

    # -- generation ---------------------------------------------------------------------------
    def generate(self, message: Any, dataset: str | None = None) -> str:
        return self.generate_inner(_as_message(message), dataset)

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        images, text = _interleave(message)
        sample = Sample(images=images, conversation=[Turn("user", text)])
        return self.predictor.run([sample], self.generation)[0].plain_text

    def chat_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        """Multi-turn: ``[{"role": "user"|"assistant", "content": message}, ...]`` ending with the user."""
        turns, images = [], []
        for m in message:
            role = m.get("role")
            if role not in ("user", "assistant"):
                raise ValueError(f"chat roles must be 'user' or 'assistant', got {role!r}")
            imgs, text = _interleave(_as_message(m["content"]))
            images += imgs
            turns.append(Turn(role, text))
        sample = Sample(images=images, conversation=turns)
        return self.predictor.run([sample], self.generation)[0].plain_text

    def chat(self, messages: list[dict[str, Any]], dataset: str | None = None) -> str:
        return self.chat_inner(messages, dataset)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan")


def _dataset_type(dataset: str | None) -> str | None:
    if dataset is None:
        return None
    try:
        from vlmeval.dataset import DATASET_TYPE  # type: ignore[import-not-found]
    except ImportError:
        return None
    return DATASET_TYPE(dataset)


def _as_message(message: Any) -> list[dict[str, Any]]:
    """VLMEvalKit's accepted inputs (str, dict, list of str, list of dicts) -> list of typed dicts; a
    string naming an existing image file is an image, as VLMEvalKit's mime check decides."""
    if isinstance(message, (str, dict)):
        message = [message]
    if not isinstance(message, list) or not message:
        raise ValueError(
            f"a message is a string, a {{type, value}} dict or a non-empty list of them, got {message!r}"
        )
    out = []
    for m in message:
        if isinstance(m, str):
            out.append({"type": "image" if _is_image_file(m) else "text", "value": m})
        elif isinstance(m, dict) and "type" in m and "value" in m:
            if m["type"] not in ("text", "image"):
                raise ValueError(f"message items must be of type 'text' or 'image', got {m['type']!r}")
            out.append(m)
        else:
            raise ValueError(f"message items must be strings or {{type, value}} dicts, got {m!r}")
    return out


def _interleave(message: list[dict[str, Any]]) -> tuple[list[Image.Image], str]:
    """Images in order and the text with ``<image>`` where each image was (texts joined by newlines)."""
    images, parts = [], []
    for m in message:
        if m["type"] == "image":
            images.append(load_image(m["value"]))
            parts.append(IMAGE_TOKEN)
        else:
            parts.append(str(m["value"]))
    return images, "\n".join(parts)
