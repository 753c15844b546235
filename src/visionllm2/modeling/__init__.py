"""Model parts: vision encoder, projector, LLM, super links, region encoder, the model and its builder."""
