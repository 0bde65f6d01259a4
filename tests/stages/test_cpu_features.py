"""Native bf16 from /proc/cpuinfo: the two CPUs this machine kind has shown, and an Arm one."""

from __future__ import annotations

from stages.cpu_features import cpu_flags, cpu_model, cpu_summary, has_native_bf16

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
"""
XEON_AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = """model name\t: AMD EPYC 9B14
flags\t\t: avx avx2 avx512f avx512_bf16 avx512_vnni
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd sve bf16 i8mm
CPU implementer\t: 0x41
"""


def test_native_bf16_from_the_flags() -> None:
    assert not has_native_bf16(EPYC_AVX2)
    assert has_native_bf16(XEON_AMX) and has_native_bf16(ZEN4) and has_native_bf16(GRAVITON3)
    assert not has_native_bf16("")  # no /proc/cpuinfo (not Linux): assume none


def test_model_and_flags_of_the_first_cpu() -> None:
    assert cpu_model(EPYC_AVX2) == "AMD EPYC 7B12" and cpu_model(GRAVITON3) == "unknown"
    assert "avx2" in cpu_flags(EPYC_AVX2) and "avx512f" not in cpu_flags(EPYC_AVX2)
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(XEON_AMX)
    assert "sve" in cpu_flags(GRAVITON3)


def test_summary_of_this_machine_names_what_a_benchmark_records() -> None:
    summary = cpu_summary()
    assert summary["cpu"] and summary["cores"] >= 1 and len(summary["load_average"]) == 3
    assert summary["native_bf16"] == has_native_bf16()
    assert summary["native_bf16"] == bool({"amx_bf16", "avx512_bf16", "bf16"} & set(summary["flags"]))
    assert isinstance(summary["torch_cpu_capability"], str) and summary["torch_cpu_capability"]
