"""visionllm2: one multimodal LLM that answers in text and drives task decoders through super links."""

from visionllm2.config import ModelConfig, tiny_config
from visionllm2.data.sample import LinkTarget, RegionPrompt, Sample, Turn
from visionllm2.inference.generate import GenerationConfig
from visionllm2.inference.predictor import VisionLLM2
from visionllm2.inference.results import Detection, GeneratedImage, Result, SemanticMap
from visionllm2.modeling.builder import build_model
from visionllm2.modeling.model import VisionLLM2Model

__all__ = [
    "Detection",
    "GeneratedImage",
    "GenerationConfig",
    "LinkTarget",
    "ModelConfig",
    "RegionPrompt",
    "Result",
    "Sample",
    "SemanticMap",
    "Turn",
    "VisionLLM2",
    "VisionLLM2Model",
    "build_model",
    "tiny_config",
]
__version__ = "0.1.0"
