"""What this CPU can do for the dtype choice: its model, its flags, and whether it has native bf16.

bf16 matmuls are fast only where the CPU executes them natively: AMX (``amx_bf16``, Intel
Sapphire Rapids and later) or AVX512_BF16 (``avx512_bf16``: Intel Cooper Lake and later, AMD Zen 4
and later), or, on Arm, the BF16 extension (``bf16`` in ``Features``). Elsewhere (AVX2 only)
PyTorch emulates bf16 and a bf16 run was measured 6–15× slower than fp32 (docs/material.md §1), so an
``auto`` dtype must stay fp32 there. Machines of one kind differ, so benchmarks record
``cpu_summary()`` with every figure.

Reads ``/proc/cpuinfo`` (Linux); elsewhere the model is ``unknown`` and there is no native bf16.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
"""x86 AMX and AVX512_BF16, and Arm's BF16 extension (aarch64 lists it as ``bf16``)."""


def _cpuinfo(text: str | None) -> str:
    if text is not None:
        return text
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU listed (``flags`` on x86, ``Features`` on Arm);
    ``cpuinfo``: the text of /proc/cpuinfo (default: this machine's)."""
    for line in _cpuinfo(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, ``unknown`` where /proc/cpuinfo does not say."""
    for line in _cpuinfo(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "unknown"


def has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (module docstring): the condition for a bf16 (or
    ``bf16_mixed``) dtype to be worth measuring at all on a CPU."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def cpu_summary() -> dict[str, Any]:
    """Model, cores, the vector flags that matter for the dtype (avx*, amx*, bf16), native bf16,
    PyTorch's CPU capability (``AVX512``, ``AVX2``, …) and the load average: what a benchmark
    records beside its figures."""
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx")) or f == "bf16"),
        "native_bf16": has_native_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
