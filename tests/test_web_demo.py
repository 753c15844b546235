"""Web demo end to end in headless Chromium: upload, draw a box prompt, ask, see the drawn result."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from surface_models import save_det_model, shapes_image
from visionllm2 import VisionLLM2
from visionllm2.serving.server import ServerSettings, create_app

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture()
def server_url(tmp_path, monkeypatch):
    """A real uvicorn on a free loopback port, serving a tiny [DET]-emitting model saved to disk."""
    import uvicorn

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    predictor = VisionLLM2.from_pretrained(save_det_model(tmp_path / "demo-model"), device="cpu")
    app = create_app(predictor, ServerSettings(model_id="demo-model"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_upload_draw_box_ask_and_see_detections(server_url, tmp_path):
    image = shapes_image(192, 144)
    path = tmp_path / "upload.png"
    image.save(path)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            requests = []
            page.on(
                "request", lambda r: requests.append(r) if r.url.endswith("/v1/chat/completions") else None
            )
            page.goto(server_url + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('demo-model')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#canvas[data-loaded='1']")

            # Draw a box prompt on the canvas (the canvas shows the image scaled to 512 px wide).
            page.check("input[name=tool][value=box]")
            box = page.locator("#canvas").bounding_box()
            page.mouse.move(box["x"] + 40, box["y"] + 30)
            page.mouse.down()
            page.mouse.move(box["x"] + 200, box["y"] + 150, steps=5)
            page.mouse.up()
            assert "box" in page.inner_text("#region-info")

            page.fill("#prompt", "Detect the circles and squares.")
            page.fill("#max-tokens", "3")
            page.click("#send")
            page.wait_for_selector("#detections tr.det", timeout=30_000)

            rows = page.locator("#detections tr.det")
            assert rows.count() == 3
            assert "[DET]" in page.inner_text("#log")
            src = page.get_attribute("#rendered", "src")
            assert page.is_visible("#rendered") and src.startswith("data:image/png;base64,")
            assert page.evaluate("document.getElementById('rendered').naturalWidth") == image.width

            sent = json.loads(requests[0].post_data)
            parts = sent["messages"][-1]["content"]
            assert [p["type"] for p in parts] == ["image_url", "text", "region"]
            x0, y0, x1, y1 = parts[2]["region"]["data"]  # in pixels of the 192x144 original
            assert parts[2]["region"]["kind"] == "box" and 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 144
            assert abs(x0 - 40 * 192 / 512) < 3 and abs(y1 - 150 * 192 / 512) < 3
            assert sent["visionllm2"]["render"] is True

            # A second turn replays the history (image + first answer) and keeps working.
            page.fill("#prompt", "And again?")
            page.click("#send")
            page.wait_for_function(
                "document.querySelectorAll('#log .msg.assistant').length === 2 && "
                "!document.querySelector('#log .msg.assistant:last-child').textContent.includes('…')"
            )
            assert "Error" not in page.inner_text("#log")
            second = json.loads(requests[1].post_data)["messages"]
            assert [m["role"] for m in second] == ["user", "assistant", "user"]
        finally:
            browser.close()

    # The drawn result really differs from the upload: boxes and the prompt were drawn on it.
    rendered = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
    assert rendered.size == image.size
    assert np.abs(np.asarray(rendered, int) - np.asarray(image, int)).sum() > 0
