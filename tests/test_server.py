"""OpenAI-compatible server: completions, streaming, structured outputs, batching, limits, files."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from surface_models import det_model, shapes_image
from visionllm2 import VisionLLM2
from visionllm2.inference.generate import GenerationConfig
from visionllm2.serving.server import BatchQueue, ServerSettings, create_app


@pytest.fixture(scope="module")
def predictor():
    return VisionLLM2(model=det_model(seed=0))


@pytest.fixture()
def make_client(predictor, monkeypatch):
    # create_app sets PIL's process-wide pixel limit; restore it after each test.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    clients = []

    def make(**settings) -> TestClient:
        client = TestClient(create_app(predictor, ServerSettings(model_id="tiny-test", **settings)))
        client.__enter__()  # runs the lifespan: starts the batching worker
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture()
def client(make_client):
    return make_client()


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user(text: str, *, url: str | None = None, region: dict | None = None) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}] if url else []
    parts.append({"type": "text", "text": text})
    if region:
        parts.append({"type": "region", "region": region})
    return {"role": "user", "content": parts}


def post(client, messages, **kw):
    return client.post("/v1/chat/completions", json={"model": "tiny-test", "messages": messages, **kw})


def error_of(resp, status: int) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err["message"]


def test_models_health_and_demo_page(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-test"
    assert client.get("/v1/models/tiny-test").json()["id"] == "tiny-test"
    assert "does not exist" in error_of(client.get("/v1/models/gpt-4"), 404)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-test" and health["pending"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_completion_with_structured_outputs_and_rendering(client):
    image = shapes_image()
    resp = post(
        client,
        [user("Detect the circles and squares.", url=data_url(image))],
        max_tokens=3,
        visionllm2={"render": True},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-test"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "[DET][DET][DET]"}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3
    extra = body["visionllm2"]
    assert [link["family"] for link in extra["links"]] == ["det"] * 3
    assert len(extra["detections"]) == 3
    for det in extra["detections"]:
        assert len(det["box"]) == 4 and all(0 <= v <= max(image.size) for v in det["box"])
    rendered = Image.open(io.BytesIO(base64.b64decode(extra["rendered_png_base64"])))
    assert rendered.size == image.size
    assert np.abs(np.asarray(rendered.convert("RGB"), dtype=int) - np.asarray(image, dtype=int)).sum() > 0


def test_streaming_matches_plain_completion(client):
    url = data_url(shapes_image())
    plain = post(client, [user("Detect.", url=url)], max_tokens=4).json()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "messages": [user("Detect.", url=url)],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert sum(bool(p) for p in pieces) >= 2  # the text arrives token by token, not in one piece
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length" and last["usage"]["completion_tokens"] == 4
    assert last["visionllm2"]["detections"] == plain["visionllm2"]["detections"]


def test_region_parts_and_history(client, predictor):
    url = data_url(shapes_image())
    masks = []
    hook = predictor.model.region_encoder.register_forward_hook(lambda m, a, o: masks.append(a[1]))
    try:
        resp = post(
            client, [user("What is", url=url, region={"kind": "box", "data": [48, 0, 96, 36]})], max_tokens=1
        )
    finally:
        hook.remove()
    assert resp.status_code == 200, resp.text
    assert len(masks) == 1 and masks[0].shape[0] == 1 and masks[0][0].sum() > 0
    # History: the earlier answer's [DET] links are replayed as text, so only new links decode.
    history = [user("Detect.", url=url), {"role": "assistant", "content": "[DET][DET]"}, user("Again?")]
    body = post(client, history, max_tokens=2).json()
    assert len(body["visionllm2"]["detections"]) == 2
    mask = {"size": [72, 96], "counts": [10, 30, 6872]}  # an uncompressed COCO RLE
    ok = post(client, [user("What is", url=url, region={"kind": "mask", "data": mask})], max_tokens=1)
    assert ok.status_code == 200, ok.text
    bad = post(client, [user("What is", url=url, region={"kind": "box", "data": [5, 5, 1, 1]})])
    assert "bad box region" in error_of(bad, 400)
    assert "needs an image" in error_of(
        post(client, [user("What is", region={"kind": "point", "data": [1, 1]})]), 400
    )


def test_local_files_only_under_allowed_dirs(make_client, tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    shapes_image().save(allowed / "a.png")
    shapes_image().save(outside / "b.png")
    (allowed / "link.png").symlink_to(outside / "b.png")

    closed = make_client()
    assert "disabled" in error_of(post(closed, [user("Detect.", url=str(allowed / "a.png"))]), 403)
    client = make_client(allowed_dirs=(allowed,))
    assert post(client, [user("Detect.", url=str(allowed / "a.png"))], max_tokens=1).status_code == 200
    assert post(client, [user("Detect.", url=f"file://{allowed / 'a.png'}")], max_tokens=1).status_code == 200
    for url in (str(outside / "b.png"), str(allowed / "link.png"), str(allowed / ".." / "outside" / "b.png")):
        assert "not under a folder" in error_of(post(client, [user("Detect.", url=url)]), 403)
    assert "does not exist" in error_of(post(client, [user("Detect.", url=str(allowed / "nope.png"))]), 400)
    assert "remote URLs" in error_of(post(client, [user("Detect.", url="http://example.com/a.png")]), 400)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that *claims* width x height: the header of a decompression bomb, without the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def test_request_limits_answer_4xx(make_client):
    client = make_client(
        max_body_bytes=200_000, max_image_pixels=100 * 100, max_prompt_chars=50, max_tokens=8
    )
    small = data_url(shapes_image())
    assert post(client, [user("Detect.", url=small)], max_tokens=1).status_code == 200

    big = data_url(shapes_image(160, 120))
    assert "over the limit of 10000 pixels" in error_of(post(client, [user("Detect.", url=big)]), 413)
    bomb = "data:image/png;base64," + base64.b64encode(_png_header(60_000, 60_000)).decode()
    assert "pixels" in error_of(post(client, [user("Detect.", url=bomb)]), 413)

    huge = "data:image/png;base64," + "A" * 300_000
    assert "body is over" in error_of(post(client, [user("Detect.", url=huge)]), 413)
    chunked = client.post(
        "/v1/chat/completions",
        content=iter([b'{"messages": [' + b" " * 150_000, b" " * 150_000 + b"]}"]),
        headers={"content-type": "application/json"},
    )
    assert "body is over" in error_of(chunked, 413)

    assert "characters" in error_of(post(client, [user("x" * 51, url=small)]), 400)
    assert "max_tokens=9" in error_of(post(client, [user("Detect.", url=small)], max_tokens=9), 400)
    assert "does not exist" in error_of(post(client, [user("hi")], model="gpt-4o"), 404)
    assert "base64" in error_of(post(client, [user("Detect.", url="data:image/png;base64,@@@")]), 400)
    assert "not a readable image" in error_of(
        post(client, [user("Detect.", url="data:image/png;base64," + base64.b64encode(b"nope").decode())]),
        400,
    )
    assert "placed by image_url" in error_of(post(client, [user("<image> hi")]), 400)
    assert "last message" in error_of(post(client, [user("hi"), {"role": "assistant", "content": "yo"}]), 400)
    assert "messages" in error_of(client.post("/v1/chat/completions", json={"model": "tiny-test"}), 400)
    assert "n=2" in error_of(post(client, [user("hi")], n=2), 400)


def test_concurrent_requests_are_batched_and_match_single_runs(make_client):
    client = make_client(batch_wait_ms=300, max_batch_size=8)
    urls = [data_url(shapes_image(seed=s)) for s in range(4)]
    single = [post(client, [user("Detect.", url=u)], max_tokens=2).json() for u in urls]
    out: dict[int, dict] = {}

    def call(i: int) -> None:
        out[i] = post(client, [user("Detect.", url=urls[i])], max_tokens=2).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    health = client.get("/health").json()
    assert health["largest_batch"] >= 2, health  # concurrent requests shared a forward
    for i in range(4):
        assert out[i]["choices"][0]["message"] == single[i]["choices"][0]["message"]
        got = np.array([d["box"] for d in out[i]["visionllm2"]["detections"]])
        want = np.array([d["box"] for d in single[i]["visionllm2"]["detections"]])
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert health["feature_cache"]["hits"] >= 4  # repeated images skipped the vision tower


def test_batch_queue_groups_caps_and_isolates_failures():
    batches: list[list[str]] = []

    def run(samples, generation, metas, on_token=None):
        batches.append(list(metas))
        if "bad" in metas:
            raise ValueError("bad sample")
        return [f"{m}:{generation.max_new_tokens}" for m in metas]

    async def scenario():
        q = BatchQueue(run=run, max_batch_size=3, max_wait_s=0.05, max_pending=100)
        await q.start()
        g1, g2 = GenerationConfig(max_new_tokens=1), GenerationConfig(max_new_tokens=2)
        jobs = [q.submit(None, m, g) for m, g in [("a", g1), ("b", g1), ("c", g2), ("d", g1), ("e", g1)]]
        first = await asyncio.gather(*jobs)
        bad = await asyncio.gather(q.submit(None, "x", g1), q.submit(None, "bad", g1), return_exceptions=True)
        await q.stop()
        return first, bad, q.stats

    first, bad, stats = asyncio.run(scenario())
    assert first == ["a:1", "b:1", "c:2", "d:1", "e:1"]
    assert batches[:3] == [["a", "b"], ["c"], ["d", "e"]]  # capped at 3, then split by settings
    assert bad[0] == "x:1" and isinstance(bad[1], ValueError)  # the bad request fails alone
    assert batches[3:] == [["x", "bad"], ["x"], ["bad"]]
    assert stats.largest_batch == 2 and stats.requests == 5 + 2


def test_batching_key_handles_nested_generation_options():
    from visionllm2.serving.server import _config_key

    a = _config_key(GenerationConfig(decoder_options={"gen": {"seed": 1}}))
    b = _config_key(GenerationConfig(decoder_options={"gen": {"seed": 2}}))
    assert a != b and a == _config_key(GenerationConfig(decoder_options={"gen": {"seed": 1}}))
    assert len({a, b}) == 2  # usable as a dict key
