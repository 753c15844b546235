"""The ``visionllm2`` command: one sub-command family per subsystem, each added by one line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from PIL import UnidentifiedImageError

# Each module exposes ``register(subparsers)`` adding its sub-commands; the parsed args carry
# ``func(args) -> int``. A subsystem joins the CLI with one line here.
COMMAND_MODULES = (
    "visionllm2.inference.cli",  # chat, predict
    "visionllm2.serving.cli",  # serve
    "visionllm2.training.cli",  # train
    "visionllm2.data.synthetic.cli",  # data synth
    "visionllm2.evaluation.cli",  # eval
)

# Errors that are the user's to fix: reported on one line, without a traceback.
USER_ERRORS = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    UnidentifiedImageError,
)


class CLIError(Exception):
    """A problem with the command line or its inputs, reported as one line."""


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--device``, shared by every command that loads a model."""
    p.add_argument(
        "--model",
        default="tiny",
        help="bundled model name (tiny) or a folder written by save_pretrained (default: tiny)",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto = cuda if available)"
    )


def _version() -> str:
    # From the installed metadata: importing the package itself would load torch just for --help.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionllm2")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionllm2",
        description="VisionLLM v2: one multimodal LLM for chat, detection, segmentation, pose, "
        "generation and editing.",
    )
    parser.add_argument("--version", action="version", version=f"visionllm2 {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("visionllm2: interrupted", file=sys.stderr)
        return 130
    except (CLIError, *USER_ERRORS) as e:
        if args.debug or os.environ.get("VISIONLLM2_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"visionllm2: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
