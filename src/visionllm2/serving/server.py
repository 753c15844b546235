"""OpenAI-compatible HTTP server (FastAPI) with request batching, limits and the web demo page."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN
from visionllm2.data.sample import RegionPrompt, Sample, Turn
from visionllm2.inference.generate import GenerationConfig
from visionllm2.inference.predictor import (
    ChatResult,
    ImageTooLarge,
    VisionLLM2,
    image_to_base64_png,
    load_image,
    region_prompts,
    strip_links,
)
from visionllm2.ops.masks import rle_to_mask

log = logging.getLogger("visionllm2.serving")
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class ServerSettings:
    """What the operator allows. Every limit is answered with a 4xx naming the limit."""

    model_id: str = "visionllm2"
    allowed_dirs: tuple[Path, ...] = ()  # local image files may be read only from under these
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int = 4096 * 4096  # checked from the header before decoding
    max_images: int = 4  # per request
    max_messages: int = 64
    max_prompt_chars: int = 8192  # all text parts of all messages together
    max_tokens: int = 512  # upper bound on a request's max_tokens
    default_max_tokens: int | None = None  # when a request gives none; default min(128, max_tokens)
    max_batch_size: int = 8  # requests merged into one forward
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_pending: int = 256  # queued requests beyond this get 503 (back-pressure, bounded memory)

    def __post_init__(self) -> None:
        self.allowed_dirs = tuple(Path(d).resolve() for d in self.allowed_dirs)
        for d in self.allowed_dirs:
            if not d.is_dir():
                raise ValueError(f"allowed image folder {str(d)!r} is not a folder")
        for name in (
            "max_body_bytes",
            "max_image_pixels",
            "max_prompt_chars",
            "max_tokens",
            "max_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens is None:
            self.default_max_tokens = min(128, self.max_tokens)
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ValueError(f"default_max_tokens must be in [1, max_tokens={self.max_tokens}]")


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _error_for(e: BaseException) -> APIError:
    """Map a predictor exception to the client's fault (4xx) or ours (500)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ImageTooLarge):
        return APIError(413, str(e), code="image_too_large")
    if isinstance(e, PermissionError):
        return APIError(403, str(e), code="forbidden")
    if isinstance(e, (ValueError, FileNotFoundError)):
        return APIError(400, str(e))
    log.exception("generation failed", exc_info=e)
    return APIError(500, "internal error while generating; see the server log", kind="server_error")


# -- request schema (OpenAI chat completions, plus a "region" content part) -------------------
class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class RegionPart(BaseModel):
    """A visual prompt in pixels of the conversation's first image. ``data``: [x, y] for a
    point, [x0, y0, x1, y1] for a box, [[x, y], ...] for a scribble, a COCO RLE
    ``{"size": [h, w], "counts": ...}`` for a mask."""

    kind: Literal["point", "box", "scribble", "mask"]
    data: Any


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url", "region"]
    text: str | None = None
    image_url: ImageURL | str | None = None
    region: RegionPart | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]  # "developer": OpenAI's newer "system"
    content: str | list[ContentPart] | None = None


class Extras(BaseModel):
    """Non-OpenAI options, under the request's ``visionllm2`` field."""

    model_config = ConfigDict(extra="forbid")
    render: bool = False  # add the result drawn on the image as a base64 PNG
    include_images: bool = True  # generated images as base64 PNG
    top_k: int = 0


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    visionllm2: Extras = Field(default_factory=Extras)


# -- request -> sample ------------------------------------------------------------------------
def generation_config(req: ChatCompletionRequest, settings: ServerSettings) -> GenerationConfig:
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported; ask for one choice (n=1)", param="n")
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if not 1 <= max_tokens <= settings.max_tokens:
        raise APIError(
            400,
            f"max_tokens={max_tokens} is outside [1, {settings.max_tokens}], this server's limit",
            param="max_tokens",
        )
    temperature = 0.0 if req.temperature is None else req.temperature
    if not 0 <= temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2], got {temperature}", param="temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
    return GenerationConfig(
        max_new_tokens=max_tokens,
        do_sample=temperature > 0,  # temperature 0 (the default here) is greedy decoding
        temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p,
        top_k=req.visionllm2.top_k,
        stop_strings=tuple(stops),
        seed=req.seed,
    )


def read_image_url(url: str, settings: ServerSettings) -> Image.Image:
    """A data URL, or a local file under an operator-allowed folder -> RGB image."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise APIError(
                400, "image data URLs must be base64: data:image/png;base64,...", param="image_url"
            )
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(400, f"image data URL is not valid base64: {e}", param="image_url") from e
        return load_image(raw, max_pixels=settings.max_image_pixels)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise APIError(
            400,
            "this server does not fetch remote URLs; send the image as a data URL "
            "(data:image/png;base64,...)",
            param="image_url",
        )
    if parsed.scheme not in ("", "file"):
        raise APIError(400, f"unsupported image URL scheme {parsed.scheme!r}", param="image_url")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
    if not settings.allowed_dirs:
        raise APIError(
            403,
            "local image files are disabled on this server; send a data URL, or start the server "
            "with --allow-dir FOLDER",
            code="forbidden",
            param="image_url",
        )
    # Resolve symlinks and '..' first, then check containment: a link inside an allowed folder
    # must not reach a file outside it.
    real = Path(os.path.realpath(path))
    if not path.is_absolute() or not any(real.is_relative_to(d) for d in settings.allowed_dirs):
        raise APIError(
            403,
            f"{str(path)!r} is not under a folder this server allows",
            code="forbidden",
            param="image_url",
        )
    if not real.is_file():
        raise APIError(400, f"image file {str(path)!r} does not exist", param="image_url")
    if real.stat().st_size > settings.max_body_bytes:
        raise APIError(
            413, f"image file {str(path)!r} is over {settings.max_body_bytes} bytes", code="too_large"
        )
    return load_image(real.read_bytes(), max_pixels=settings.max_image_pixels)


def _region(part: RegionPart) -> RegionPrompt:
    data = part.data
    try:
        if part.kind == "mask":
            if not isinstance(data, dict):
                raise ValueError('a mask region needs a COCO RLE: {"size": [h, w], "counts": ...}')
            return region_prompts(mask=rle_to_mask(data))[0]
        return region_prompts(**{part.kind: data})[0]
    except (ValueError, TypeError) as e:
        raise APIError(400, f"bad {part.kind} region: {e}", param="region") from e


def _join(pieces: list[str]) -> str:
    out = ""
    for p in pieces:
        if (
            out
            and not out.endswith((" ", "\n"))
            and not p.startswith((" ", "\n", ".", ",", "?", "!", ":", ";"))
        ):
            out += " "
        out += p
    return out.strip()


def build_request_sample(
    req: ChatCompletionRequest, predictor: VisionLLM2, settings: ServerSettings
) -> tuple[Sample, tuple[list[Turn], Image.Image | None, list[RegionPrompt]]]:
    """Messages -> one model sample (images at their parts, regions at theirs) and the
    result metadata. Runs in a worker thread: images are decoded here."""
    if len(req.messages) > settings.max_messages:
        raise APIError(
            400, f"{len(req.messages)} messages, over this server's limit of {settings.max_messages}"
        )
    n_chars = 0
    n_images = 0
    turns: list[Turn] = []
    images: list[Image.Image] = []
    regions: list[RegionPrompt] = []
    for i, msg in enumerate(req.messages):
        parts = (
            msg.content
            if isinstance(msg.content, list)
            else [ContentPart(type="text", text=msg.content or "")]
        )
        pieces: list[str] = []
        for part in parts:
            if part.type == "text":
                text = part.text or ""
                if IMAGE_TOKEN in text or REGION_TOKEN in text:
                    raise APIError(
                        400,
                        f"messages[{i}]: {IMAGE_TOKEN} and {REGION_TOKEN} are placed by image_url and "
                        "region content parts, not typed in the text",
                        param="messages",
                    )
                n_chars += len(text)
                if n_chars > settings.max_prompt_chars:  # checked as we go: before decoding more images
                    raise APIError(
                        400,
                        f"the prompt has over {settings.max_prompt_chars} characters, this server's limit",
                        param="messages",
                        code="prompt_too_long",
                    )
                pieces.append(text)
            elif part.type == "image_url":
                if msg.role != "user":
                    raise APIError(
                        400, f"messages[{i}]: only user messages may carry images", param="messages"
                    )
                n_images += 1
                if n_images > settings.max_images:
                    raise APIError(
                        400, f"more than {settings.max_images} images in one request", param="messages"
                    )
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                if not url:
                    raise APIError(400, f"messages[{i}]: image_url part without a url", param="messages")
                images.append(read_image_url(url, settings))
                pieces.append(IMAGE_TOKEN + "\n")
            else:
                if msg.role != "user" or part.region is None:
                    raise APIError(
                        400, f"messages[{i}]: region parts go in user messages with a 'region' field"
                    )
                regions.append(_region(part.region))
                pieces.append(REGION_TOKEN)
        content = _join(pieces)
        if msg.role != "user" or i < len(req.messages) - 1:
            # Earlier turns replay without routing tokens: their decoders already ran.
            content = strip_links(content, predictor.routing_tokens)
        turns.append(Turn("system" if msg.role == "developer" else msg.role, content))
    if turns[-1].role != "user":
        raise APIError(400, "the last message must be the user's", param="messages")
    if regions and not images:
        raise APIError(
            400, "a region part needs an image in the conversation to point into", param="messages"
        )
    try:
        predictor.model.processor.template.segments(turns, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from e
    sample = Sample(images=images, conversation=turns, regions=regions)
    return sample, (turns, images[0] if images else None, regions)


# -- batching ---------------------------------------------------------------------------------
RunFn = Callable[
    [list[Sample], GenerationConfig, list[Any], Callable[[int, int], None] | None], list[ChatResult]
]


@dataclass
class _Job:
    sample: Sample
    meta: Any
    generation: GenerationConfig
    future: asyncio.Future
    on_token: Callable[[int], None] | None = None  # called from the model thread


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> count


class BatchQueue:
    """Merges concurrent requests into one forward.

    One worker takes the first queued request, waits up to ``max_wait_s`` for more (taking at
    most ``max_batch_size``), and runs requests that share generation settings as one batch
    in a single model thread. While a batch runs, new requests queue up and form the next.
    A failing batch is retried one request at a time, so one bad request fails alone.
    """

    def __init__(self, *, run: RunFn, max_batch_size: int, max_wait_s: float, max_pending: int) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        # One thread: the model runs one batch at a time; the event loop stays free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionllm2-model")

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="visionllm2-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(
        self,
        sample: Sample,
        meta: Any,
        generation: GenerationConfig,
        on_token: Callable[[int], None] | None = None,
    ) -> ChatResult:
        if self._queue is None:
            raise RuntimeError("the batch queue is not started (use the app inside its lifespan)")
        if self._queue.qsize() >= self.max_pending:
            raise APIError(503, "the server is busy; retry shortly", kind="server_busy", code="overloaded")
        job = _Job(sample, meta, generation, asyncio.get_running_loop().create_future(), on_token)
        self._queue.put_nowait(job)
        return await job.future

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(jobs) < self.max_batch_size:
                try:
                    remaining = deadline - loop.time()
                    jobs.append(
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            groups: dict[str, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # the client may have gone away while queued
                    groups.setdefault(_config_key(job.generation), []).append(job)
            for group in groups.values():
                try:
                    await self._run_group(group)
                except Exception as e:  # noqa: BLE001 - the worker must outlive any batch
                    for job in group:
                        _settle(job, error=e)

    async def _run_group(self, group: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        self.stats.batches += 1
        self.stats.requests += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        self.stats.sizes[len(group)] = self.stats.sizes.get(len(group), 0) + 1

        def on_token(i: int, token: int) -> None:
            if group[i].on_token is not None:
                group[i].on_token(token)

        try:
            results = await loop.run_in_executor(
                self._executor,
                self._run,
                [j.sample for j in group],
                group[0].generation,
                [j.meta for j in group],
                on_token,
            )
        except Exception as e:  # noqa: BLE001 - isolate which request failed
            if len(group) == 1:
                _settle(group[0], error=e)
                return
            for job in group:
                try:
                    (res,) = await loop.run_in_executor(
                        self._executor, self._run, [job.sample], job.generation, [job.meta], None
                    )
                    _settle(job, result=res)
                except Exception as e1:  # noqa: BLE001
                    _settle(job, error=e1)
            return
        for job, res in zip(group, results, strict=True):
            _settle(job, result=res)


def _settle(job: _Job, *, result: ChatResult | None = None, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _config_key(cfg: GenerationConfig) -> str:
    """Requests batch together only with identical settings; nested options (decoder_options)
    are dicts, so the key is their canonical JSON."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


# -- body limit -------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413: at once from Content-Length, otherwise while
    reading (a chunked upload has no length). The body is read here, up to the limit, and
    handed on whole: the app would read it all anyway, and no oversize body reaches a parser."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later reads wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _reject(self, send: Callable) -> None:
        err = APIError(
            413, f"request body is over this server's limit of {self.max_bytes} bytes", code="too_large"
        )
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- responses --------------------------------------------------------------------------------
def structured_outputs(result: ChatResult, extras: Extras) -> dict[str, Any]:
    """The ``visionllm2`` field: links, detections (boxes, RLE masks, keypoints), semantic maps,
    generated images (base64 PNG) and optionally the rendered result."""
    out = result.to_dict(include_images=extras.include_images)
    for key in ("text", "finish_reason", "usage"):
        out.pop(key)
    if extras.render:
        out["rendered_png_base64"] = image_to_base64_png(result.draw()) if result.drawable else None
    return out


def create_app(predictor: VisionLLM2, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app: ``/v1/chat/completions``, ``/v1/models``, ``/health`` and the demo at ``/``.

    Sets ``PIL.Image.MAX_IMAGE_PIXELS`` to the pixel limit (process-wide), so PIL itself also
    refuses decompression bombs beyond what the explicit header check already catches.
    """
    settings = settings or ServerSettings()
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    started = int(time.time())

    def run(
        samples: list[Sample], generation: GenerationConfig, metas: list[Any], on_token=None
    ) -> list[ChatResult]:
        return predictor.run(samples, generation, meta=metas, on_token=on_token)

    queue = BatchQueue(
        run=run,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.batch_wait_ms / 1000.0,
        max_pending=settings.max_pending,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await queue.start()
        yield
        await queue.stop()

    app = FastAPI(title="VisionLLM v2", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.state.predictor, app.state.settings, app.state.queue = predictor, settings, queue

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        err = APIError(
            400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None
        )
        return JSONResponse(err.body(), status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = queue.stats
        return {
            "status": "ok",
            "model": settings.model_id,
            "device": str(predictor.device),
            "pending": queue.pending,
            "requests": s.requests,
            "batches": s.batches,
            "largest_batch": s.largest_batch,
            "batch_sizes": {str(k): v for k, v in sorted(s.sizes.items())},
            "feature_cache": {"hits": predictor.cache_hits, "misses": predictor.cache_misses},
        }

    def model_card() -> dict[str, Any]:
        return {"id": settings.model_id, "object": "model", "created": started, "owned_by": "visionllm2"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_id:
            raise APIError(
                404,
                f"model {model_id!r} does not exist; this server serves {settings.model_id!r}",
                code="model_not_found",
            )
        return model_card()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        if req.model not in (None, "", settings.model_id):
            raise APIError(
                404,
                f"model {req.model!r} does not exist; this server serves {settings.model_id!r}",
                param="model",
                code="model_not_found",
            )
        generation = generation_config(req, settings)
        try:
            sample, meta = await run_in_threadpool(build_request_sample, req, predictor, settings)
        except Exception as e:  # noqa: BLE001 - image decoding errors are the client's
            raise _error_for(e) from e
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(
                _stream(
                    queue,
                    predictor.model.processor.decode,
                    sample,
                    meta,
                    generation,
                    req,
                    cid,
                    created,
                    settings.model_id,
                ),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await queue.submit(sample, meta, generation)
        except Exception as e:  # noqa: BLE001
            raise _error_for(e) from e
        extra = await run_in_threadpool(structured_outputs, result, req.visionllm2)
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": settings.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(result),
                "visionllm2": extra,
            }
        )

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

    return app


def _usage(result: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _stream(
    queue: BatchQueue,
    decode: Callable[[list[int]], str],
    sample: Sample,
    meta: Any,
    generation: GenerationConfig,
    req: ChatCompletionRequest,
    cid: str,
    created: int,
    model_id: str,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format. The role chunk goes out at once, then the
    text as it is generated (the model thread hands every token to the event loop); the last
    chunk carries finish_reason and the structured outputs (decoders run after the text)."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[int] = asyncio.Queue()
    job = asyncio.ensure_future(
        queue.submit(sample, meta, generation, lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t))
    )
    ids: list[int] = []
    sent = ""
    try:
        while not (job.done() and tokens.empty()):
            getter = asyncio.ensure_future(tokens.get())
            await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            ids.append(getter.result())
            # Decode all ids so far: a character may span several byte tokens.
            text = decode(ids)
            if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                yield chunk({"content": text[len(sent) :]})
                sent = text
        result = job.result()
        extra = await run_in_threadpool(structured_outputs, result, req.visionllm2)
    except Exception as e:  # noqa: BLE001 - the status line is already sent: report in-band
        yield f"data: {json.dumps(_error_for(e).body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    if result.text.startswith(sent) and len(result.text) > len(sent):
        yield chunk({"content": result.text[len(sent) :]})  # whatever the last decode held back
    final: dict[str, Any] = {"visionllm2": extra}
    if req.stream_options is not None and req.stream_options.include_usage:
        final["usage"] = _usage(result)
    yield chunk({}, result.finish_reason, **final)
    yield "data: [DONE]\n\n"


def serve(
    predictor: VisionLLM2,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level=log_level)


__all__: Sequence[str] = ("APIError", "BatchQueue", "ServerSettings", "create_app", "serve")
