"""Engine settings: the `[engine]` table of neuron.toml."""

from __future__ import annotations

from dataclasses import dataclass

from cortex.config import EngineSection


@dataclass(frozen=True)
class EngineConfig:
    """How one model's engine batches and how big its KV cache may grow."""

    max_batch: int = 32
    #: Share of the device memory still free after the weights that the KV cache may take.
    kv_cache_memory: float = 0.85
    #: On CPU there is no "free device memory": the KV cache gets this many bytes at most.
    cpu_kv_cache_bytes: int = 2 * 2**30
    block_size: int = 16
    max_prefill_tokens: int = 2048
    prefix_cache: bool = True
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.block_size < 1 or self.max_prefill_tokens < 1:
            raise ValueError("max_batch, block_size and max_prefill_tokens must be positive")
        if not 0.0 < self.kv_cache_memory <= 1.0:
            raise ValueError("kv_cache_memory must be in (0, 1]")

    @classmethod
    def from_section(cls, section: EngineSection) -> EngineConfig:
        """Build from neuron.toml's `[engine]` table."""
        return cls(
            max_batch=section.max_batch,
            kv_cache_memory=section.kv_cache_memory,
            cpu_kv_cache_bytes=int(section.cpu_kv_cache_bytes),
            block_size=section.block_size,
            max_prefill_tokens=section.max_prefill_tokens,
            prefix_cache=section.prefix_cache,
            cuda_graphs=section.cuda_graphs,
        )
