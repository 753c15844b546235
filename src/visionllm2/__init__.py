"""visionllm2: one multimodal LLM that answers in text and drives task decoders through super links."""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> defining module. Imported on first use, so `import visionllm2.data…` (or the
# CLI's --help) does not pay for torch and transformers.
_EXPORTS = {
    "VisionLLM2": "visionllm2.inference.predictor",
    "VisionLLM2Model": "visionllm2.modeling.model",
    "build_model": "visionllm2.modeling.builder",
    "ModelConfig": "visionllm2.config",
    "tiny_config": "visionllm2.config",
    "Sample": "visionllm2.data.sample",
    "Turn": "visionllm2.data.sample",
    "LinkTarget": "visionllm2.data.sample",
    "RegionPrompt": "visionllm2.data.sample",
    "GenerationConfig": "visionllm2.inference.generate",
    "Result": "visionllm2.inference.results",
    "Detection": "visionllm2.inference.results",
    "SemanticMap": "visionllm2.inference.results",
    "GeneratedImage": "visionllm2.inference.results",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'visionllm2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
