"""Teacher backends behind one interface (``base.TeacherBackend``), opened by name.

Each backend module imports its heavy library (torch + transformers, vLLM) only when it is
opened, so resolving names, planning units and reading caches import neither.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from stages.extract.backends.base import TeacherBackend, TopkRows
from stages.extract.settings import MIXED_DTYPE as MIXED
from stages.extract.settings import ExtractBackend, ExtractSettings

__all__ = ["TeacherBackend", "TopkRows", "open_backend", "resolve_backend"]


def resolve_backend(name: ExtractBackend) -> ExtractBackend:
    """The concrete backend for ``name`` (checked with the config): ``auto`` is vLLM where it is
    installed and a GPU is present, else transformers (on CPU transformers is the faster one;
    docs/material.md §1)."""
    if name != "auto":
        return name
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def resolve_dtype(dtype: str, backend: str) -> str:
    """The concrete teacher dtype for ``dtype`` on the concrete ``backend``: ``auto`` is the mixed
    dtype (bf16 body, fp32 head and log-softmax) for the transformers backend on a CPU with
    native bf16 — 1.3–1.8× faster there with top-1 equal to fp32's on ≥ 98.5 % of rows and the
    target logprob within 0.014–0.023 nat on average (bench/results/extract_fidelity.md) — and
    float32 everywhere else (GPU runs, vLLM, CPUs that emulate bf16 several times slower)."""
    if dtype != "auto":
        return dtype
    import torch

    from stages.cpu_features import has_native_bf16
    from stages.extract.settings import MIXED_DTYPE

    on_cpu = backend == "transformers" and not torch.cuda.is_available()
    return MIXED_DTYPE if on_cpu and has_native_bf16() else "float32"


def open_backend(
    name: str,
    *,
    teacher: str,
    model_path: str | Path,
    settings: ExtractSettings,
    dtype: str,
    vocab_size: int,
    space_mask: np.ndarray,
) -> TeacherBackend:
    """Load the teacher under backend ``name`` (after ``resolve_backend``) with the ``extract``
    section ``settings`` (checked) and the teacher's ``dtype`` (its own or ``settings.dtype``).
    ``vocab_size`` is the tokenizer's, used by the fake backend only. ``settings.draws`` > 0: the
    backend also draws that many tokens per row from the full softmax (transformers and fake; vLLM
    returns only its top-k). ``space_mask``: [V] bool ids that start a new word
    (``stages/align/token_text.space_mask``), whose mass is each row's σ; the transformers and fake
    backends return log σ, vLLM none (its prompt logprobs are top-k only)."""
    top_k, max_tokens, draws = settings.top_k, settings.max_tokens, settings.draws
    if name == "fake":
        from stages.extract.backends.fake_backend import FakeBackend

        return FakeBackend(teacher, top_k=top_k, vocab_size=vocab_size, draws=draws, space_mask=space_mask)
    if name == "transformers":
        from stages.extract.backends.transformers_backend import TransformersBackend

        return TransformersBackend(
            model_path,
            top_k=top_k,
            dtype=dtype,
            batch_tokens=settings.batch_tokens,
            max_tokens=max_tokens,
            draws=draws,
            space_mask=space_mask,
        )
    assert name == "vllm", f"open_backend takes a resolved backend (resolve_backend), got {name!r}"
    if draws:
        raise ValueError(
            f"extract.draws={draws} needs the full softmax, which the {name} backend does not return: "
            f"set teachers.{teacher}.backend=transformers (or extract.backend=transformers)"
        )
    if dtype == MIXED:
        raise ValueError(
            f"dtype {MIXED} is a transformers-backend mode, the {name} backend has none: set "
            f"teachers.{teacher}.backend=transformers or another dtype (float32, bfloat16)"
        )
    try:
        from stages.extract.backends.vllm_backend import VllmBackend
    except ImportError as e:
        raise ValueError(f"backend vllm cannot be imported ({e}): install the `cpu` or `gpu` extra") from e
    return VllmBackend(
        model_path,
        top_k=top_k,
        max_tokens=max_tokens,
        dtype=dtype,
        max_logprobs=settings.vllm_max_logprobs,
        enforce_eager=settings.vllm_enforce_eager,
        tensor_parallel_size=settings.vllm_tensor_parallel_size,
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        kv_cache_gib=settings.vllm_kv_cache_gib,
    )
