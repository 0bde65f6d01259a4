"""The settings of stage one (``polyfuse extract``), the ``extract:`` section of the YAML config.

Every default lives here; the backends take these values as they are (``check`` ran first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data_schemas.teacher_shard import MAX_DRAWS, LogprobLayout
from stages.setting_rules import require, require_choices

MIXED_DTYPE = "bf16_mixed"
"""The mixed extraction dtype: bf16 decoder layers, fp32 final norm, head and log-softmax
(transformers backend; ``stages/extract/backends/mixed_dtype.py``)."""
ExtractDtype = Literal["auto", "float32", "bfloat16", "float16", "bf16_mixed"]
"""Compute dtypes of a teacher (``extract.dtype`` and a teacher's own ``dtype``)."""
ExtractBackend = Literal["auto", "vllm", "transformers", "fake"]
"""Teacher backends (``extract.backend`` and a teacher's own ``backend``; stages/extract/backends)."""


@dataclass
class ExtractSettings:
    """Stage one: how teachers are run over the corpus."""

    backend: ExtractBackend = "auto"
    """``auto``: vLLM when it imports and a GPU is present, else transformers. ``fake``:
    deterministic values for tests."""
    top_k: int = 10
    """Logprobs kept per position (sorted descending)."""
    max_tokens: int = 1024
    """Longest teacher sequence; longer samples are truncated and flagged, never dropped."""
    dtype: ExtractDtype = "auto"
    """Teacher compute dtype; part of the cache key (a bf16 teacher is a different teacher), which
    holds the resolved one. ``auto``: ``bf16_mixed`` with the transformers backend on a CPU with
    native bf16, else float32 (``backends.resolve_dtype``; the fidelity that decided it:
    bench/results/extract_fidelity.md).
    ``bf16_mixed`` (transformers backend only): the decoder layers in bf16, the final norm, LM head
    and log-softmax in fp32 — the speed of bf16 where the CPU has native bf16 (AMX,
    AVX512_BF16; ``stages/cpu_features.py``), the logits closer to fp32's than a bf16 model's
    (``bench/extract_fidelity.py`` measures both). On a CPU without native bf16 (AVX2 only) any
    bf16 is several times slower than float32."""
    batch_tokens: int = 4096
    """Token budget per forward batch (transformers backend)."""
    vllm_max_logprobs: int = 20
    """vLLM's ``max_logprobs``; ``top_k`` may not exceed it."""
    vllm_enforce_eager: bool = True
    """vLLM ``enforce_eager`` (skips CUDA-graph capture; faster start for one-pass extraction)."""
    vllm_tensor_parallel_size: int = 1
    """vLLM ``tensor_parallel_size``."""
    vllm_gpu_memory_utilization: float = 0.85
    """vLLM ``gpu_memory_utilization``."""
    vllm_kv_cache_gib: float | None = None
    """vLLM KV cache size in GiB (``kv_cache_memory_bytes``). None: from
    ``vllm_gpu_memory_utilization`` on a GPU, 2 GiB with the CPU build (whose default would
    reserve a fraction of all host memory)."""
    logprob_layout: LogprobLayout = "quant"
    """How teacher shards store logprobs: ``quant`` (1/32-nat grid, error ≤ 0.0156 nat, 23–25
    bytes per token at k = 10 on the demo teachers) or ``fp16`` (the plain float16 columns,
    25–28 bytes per token). Part of the cache key."""
    draws: int = 0
    """0: store the top-k (the cache `distill.target` renormalised / residual read). N > 0: store
    instead N tokens per position drawn from the teacher's full softmax (seeded, reproducible;
    the cache `distill.target=sampled` reads; RS-KD). Its own teacher key; transformers or fake
    backend only (vLLM returns no full softmax)."""

    def check(self) -> None:
        require_choices(self, "extract")
        require(
            self.top_k >= 1, "extract.top_k", self.top_k, "must be at least 1", "set extract.top_k to e.g. 10"
        )
        require(
            self.top_k <= self.vllm_max_logprobs,
            "extract.top_k",
            self.top_k,
            f"must not exceed extract.vllm_max_logprobs ({self.vllm_max_logprobs})",
            "raise extract.vllm_max_logprobs or lower extract.top_k",
        )
        require(
            self.max_tokens >= 2, "extract.max_tokens", self.max_tokens, "must be at least 2", "use e.g. 1024"
        )
        require(
            self.batch_tokens >= self.max_tokens,
            "extract.batch_tokens",
            self.batch_tokens,
            f"must be at least extract.max_tokens ({self.max_tokens})",
            "raise extract.batch_tokens",
        )
        require(
            0 <= self.draws <= MAX_DRAWS,
            "extract.draws",
            self.draws,
            f"must be in [0, {MAX_DRAWS}]",
            "use 0 for a top-k cache or e.g. 12 drawn tokens per position",
        )
        require(
            self.vllm_tensor_parallel_size >= 1,
            "extract.vllm_tensor_parallel_size",
            self.vllm_tensor_parallel_size,
            "must be at least 1",
            "use 1 per GPU",
        )
        require(
            0.0 < self.vllm_gpu_memory_utilization <= 1.0,
            "extract.vllm_gpu_memory_utilization",
            self.vllm_gpu_memory_utilization,
            "must be in (0, 1]",
            "use e.g. 0.85",
        )
