"""``visionllm2 serve``: the OpenAI-compatible server and web demo on one port."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visionllm2.cli import CLIError, add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (OpenAI-compatible API + web demo)",
        description="Serve /v1/chat/completions, /v1/models and /health, and the web demo at /. "
        "Binds to 127.0.0.1 unless --host says otherwise.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-id", help="model name clients use (default: the --model value's name)")
    p.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="folder whose images clients may reference by local path / file:// URL "
        "(repeatable; default none)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="requests merged into one forward")
    p.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests"
    )
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image (width x height)")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-chars", type=int, default=8192, help="longest prompt (all messages)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from visionllm2.inference.predictor import VisionLLM2
    from visionllm2.serving.server import ServerSettings, serve

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    settings = ServerSettings(
        model_id=args.model_id or Path(str(args.model)).name,
        allowed_dirs=tuple(Path(d) for d in args.allow_dir),
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_image_pixels=args.max_image_pixels,
        max_tokens=args.max_tokens,
        max_prompt_chars=args.max_prompt_chars,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    predictor = VisionLLM2.from_pretrained(args.model, device=args.device)
    print(
        f"visionllm2: serving {settings.model_id!r} on http://{args.host}:{args.port}/ (demo at /)",
        file=sys.stderr,
    )
    serve(predictor, settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0
