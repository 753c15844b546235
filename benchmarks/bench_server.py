"""Load test of ``visionllm2 serve``: N concurrent clients on loopback for a bounded time.

Starts the server as a subprocess on 127.0.0.1 (a tiny random model with a small grounding
decoder unless ``--model`` names one), warms it up, then runs two equal measured phases of
concurrent ``/v1/chat/completions`` requests (image + detection prompt). Reports throughput,
latency percentiles, failures (must be 0), how requests were batched, and the server's RSS
after warm-up and after each phase: with a steady workload, growth from phase 1 to phase 2
means a leak. Exits non-zero on any failure or a leak.

    .venv/bin/python benchmarks/bench_server.py --clients 8 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # loopback only


def tiny_grounding_model(folder: Path) -> Path:
    """A tiny random model whose det/seg/grd links drive a small real grounding decoder."""
    import torch

    from visionllm2 import build_model
    from visionllm2.config import DecoderConfig, tiny_config

    grounding = DecoderConfig(
        type="grounding",
        link_dim=32,
        kwargs=dict(
            pixel_size=64,
            hidden_dim=32,
            num_heads=4,
            ffn_dim=64,
            num_encoder_layers=1,
            num_decoder_layers=1,
            num_queries=16,
            max_classes=8,
            dn_number=0,
            score_threshold=0.0,
            max_detections=5,
        ),
    )
    cfg = tiny_config(grounding=grounding)
    for fam in ("det", "seg", "grd"):
        cfg.families[fam].decoder = "grounding"
    torch.manual_seed(0)
    build_model(cfg).save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def data_urls(n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    urls = []
    for _ in range(n):
        img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


async def client_loop(
    http: httpx.AsyncClient, urls: list[str], args: argparse.Namespace, stop_at: float, k: int, out: dict
) -> None:
    i = k
    while time.monotonic() < stop_at:
        body = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}},
                        {"type": "text", "text": args.prompt},
                    ],
                }
            ],
            "max_tokens": args.max_tokens,
        }
        i += args.clients
        t0 = time.perf_counter()
        try:
            r = await http.post("/v1/chat/completions", json=body)
            data = r.json()
            ok = (
                r.status_code == 200
                and "choices" in data
                and isinstance(data["visionllm2"]["detections"], list)
            )
        except (httpx.HTTPError, ValueError, KeyError) as e:
            ok, data = False, {"error": repr(e)}
        out["latency"].append(time.perf_counter() - t0)
        if ok:
            out["tokens"] += data["usage"]["completion_tokens"]
            out["detections"] += len(data["visionllm2"]["detections"])
        else:
            out["failures"] += 1
            out["errors"].append(str(data)[:200])


async def phase(base: str, urls: list[str], args: argparse.Namespace, seconds: float) -> dict:
    out: dict = {"latency": [], "tokens": 0, "detections": 0, "failures": 0, "errors": []}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        t0 = time.monotonic()
        stop_at = t0 + seconds
        await asyncio.gather(*(client_loop(http, urls, args, stop_at, k, out) for k in range(args.clients)))
        out["wall"] = time.monotonic() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder or bundled name (default: a tiny random grounding model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--duration", type=float, default=20.0, help="seconds of measured load (two equal phases)"
    )
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--images", type=int, default=4, help="distinct images the clients cycle through")
    ap.add_argument("--image-size", default="160x120")
    ap.add_argument("--prompt", default="Detect: circle[DET], square[DET].")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--leak-mb", type=float, default=25.0, help="RSS growth between the phases that counts as a leak"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        model = args.model or str(tiny_grounding_model(Path(tmp) / "tiny-grounding"))
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "visionllm2.cli",
            "serve",
            "--model",
            model,
            "--host",
            HOST,
            "--port",
            str(port),
            "--device",
            args.device,
            "--max-batch-size",
            str(args.max_batch_size),
            "--log-level",
            "warning",
        ]
        server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited with status {server.returncode}")
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not come up in 180 s")
                time.sleep(0.5)
            w, h = (int(v) for v in args.image_size.split("x"))
            urls = data_urls(args.images, (w, h))
            rss_start = rss_mb(server.pid)
            warm = asyncio.run(phase(base, urls, args, args.warmup))
            rss_warm = rss_mb(server.pid)
            p1 = asyncio.run(phase(base, urls, args, args.duration / 2))
            rss_p1 = rss_mb(server.pid)
            p2 = asyncio.run(phase(base, urls, args, args.duration / 2))
            rss_p2 = rss_mb(server.pid)
            health = httpx.get(base + "/health").json()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()

    lat = np.array(p1["latency"] + p2["latency"]) * 1000
    n = len(lat)
    failures = warm["failures"] + p1["failures"] + p2["failures"]
    wall = p1["wall"] + p2["wall"]
    mean_batch = health["requests"] / max(health["batches"], 1)
    leak = rss_p2 - rss_p1 > args.leak_mb
    rows = [
        ("model", model if args.model else "tiny random + grounding decoder"),
        ("device", health["device"]),
        ("clients", args.clients),
        ("measured time (s)", f"{wall:.1f}"),
        ("requests", n),
        ("failures", failures),
        ("throughput (req/s)", f"{n / wall:.2f}"),
        ("generated tokens/s", f"{(p1['tokens'] + p2['tokens']) / wall:.1f}"),
        ("detections returned", p1["detections"] + p2["detections"]),
        ("latency p50 (ms)", f"{np.percentile(lat, 50):.0f}"),
        ("latency p90 (ms)", f"{np.percentile(lat, 90):.0f}"),
        ("latency p99 (ms)", f"{np.percentile(lat, 99):.0f}"),
        ("latency max (ms)", f"{lat.max():.0f}"),
        ("mean batch size", f"{mean_batch:.2f} (largest {health['largest_batch']})"),
        ("server RSS at start (MB)", f"{rss_start:.0f}"),
        ("server RSS after warm-up (MB)", f"{rss_warm:.0f}"),
        ("server RSS after phase 1 (MB)", f"{rss_p1:.0f}"),
        ("server RSS after phase 2 (MB)", f"{rss_p2:.0f}  (phase 2 growth {rss_p2 - rss_p1:+.1f} MB)"),
        ("verdict", "FAIL" if failures or leak else "ok: no failures, no RSS growth under steady load"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n{'metric'.ljust(width)} | value")
    print(f"{'-' * width}-|-{'-' * 40}")
    for k, v in rows:
        print(f"{k.ljust(width)} | {v}")
    for e in (warm["errors"] + p1["errors"] + p2["errors"])[:5]:
        print("error:", e)
    return 1 if failures or leak else 0


if __name__ == "__main__":
    sys.exit(main())
