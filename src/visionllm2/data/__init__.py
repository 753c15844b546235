"""Samples, conversation templates, tokenizers, the processor, datasets and formats."""
