"""A KV cache that writes new keys/values into spare capacity instead of concatenating.

transformers' ``DynamicCache`` appends with ``torch.cat``, which copies every layer's whole cache
on every decoding step; at 100M parameters and batch 8 on a CPU that copy took ~11% of the
generation time (``benchmarks/README.md``). Here each layer keeps a buffer with room to spare and
hands attention a view of its filled part; the buffer is reallocated (one copy) only when it is
full, to twice the length then needed.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs


class _PreallocatedLayer(DynamicLayer):
    """One layer's keys and values: a (B, H, capacity, D) buffer, of which ``length`` are used."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._keys = self._values = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self._keys is None or end > self._keys.shape[-2]:
            # First write: room for ``reserve`` more positions; later: double.
            capacity = end + self.reserve if self._keys is None else 2 * end
            self._keys = self._grow(self._keys, key_states, capacity)
            self._values = self._grow(self._values, value_states, capacity)
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys = self._keys[..., :end, :]
        self.values = self._values[..., :end, :]
        return self.keys, self.values

    def _grow(self, old: torch.Tensor | None, new: torch.Tensor, capacity: int) -> torch.Tensor:
        buf = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
        if old is not None:
            buf[..., : self.length, :] = old[..., : self.length, :]
        return buf

    def reset(self) -> None:
        super().reset()
        self.length = 0
        self._keys = self._values = None

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the preallocated cache cannot be cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("the preallocated cache cannot change its batch")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("the preallocated cache cannot change its batch")


def preallocated_cache(config: PretrainedConfig, reserve: int) -> Cache:
    """A cache for ``config``'s decoder with room for ``reserve`` positions past the prompt
    before it reallocates. Models with sliding-window, chunked or shared-KV layers get
    transformers' ``DynamicCache`` (their layers need its own bookkeeping)."""
    if reserve < 0:
        raise ValueError(f"reserve must be >= 0, got {reserve}")
    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    if any(t != "full_attention" for t in layer_types):
        return DynamicCache(config=config)
    return Cache(layers=[_PreallocatedLayer(reserve) for _ in layer_types])
