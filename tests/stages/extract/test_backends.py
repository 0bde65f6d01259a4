"""The concrete backend and dtype an `auto` setting resolves to on this machine and on others."""

from __future__ import annotations

import pytest

from stages.extract import backends


@pytest.mark.parametrize(
    ("backend", "native_bf16", "cuda", "expected"),
    [
        ("transformers", True, False, "bf16_mixed"),  # AMX / AVX512_BF16 CPU
        ("transformers", False, False, "float32"),  # AVX2 only: bf16 would be emulated, slower
        ("transformers", True, True, "float32"),  # a GPU keeps fp32 unless asked
        ("vllm", True, False, "float32"),  # the mixed dtype is a transformers mode
        ("fake", True, False, "float32"),
    ],
)
def test_auto_dtype_is_mixed_only_for_transformers_on_a_cpu_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, backend: str, native_bf16: bool, cuda: bool, expected: str
) -> None:
    import torch

    import stages.cpu_features

    monkeypatch.setattr(stages.cpu_features, "has_native_bf16", lambda *a, **k: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert backends.resolve_dtype("auto", backend) == expected
    assert backends.resolve_dtype("bfloat16", backend) == "bfloat16"  # an explicit dtype stays
