"""What this machine can do: decided by looking, never by try/except around a crash.

HugeCTR ships only in NVIDIA's Merlin HugeCTR container, and cuDF needs a GPU to import, so both are
optional; every stage asks here before choosing an engine.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from functools import lru_cache


def installed(module: str) -> bool:
    """Whether ``module`` can be found on the path (without importing it)."""
    return importlib.util.find_spec(module) is not None


@lru_cache(maxsize=1)
def gpu_count() -> int:
    """Number of NVIDIA GPUs visible to ``nvidia-smi`` (0 without a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return (
        sum(line.startswith("GPU ") for line in out.stdout.splitlines())
        if out.returncode == 0
        else 0
    )


def has_cudf() -> bool:
    """cuDF is usable: installed and a GPU present (it fails to import without one)."""
    return gpu_count() > 0 and installed("cudf")


def has_hugectr() -> bool:
    """HugeCTR is usable: installed (Merlin container) and a GPU present."""
    return gpu_count() > 0 and installed("hugectr")


def report() -> dict[str, object]:
    """A summary for notebooks and logs."""
    return {
        "gpus": gpu_count(),
        "cudf": has_cudf(),
        "hugectr": has_hugectr(),
        "torch": installed("torch"),
        "tensorflow": installed("tensorflow"),
        "transformers": installed("transformers"),
        "nvtabular": installed("nvtabular"),
    }


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """The CPU multiplies bfloat16 matrices in hardware (Intel AMX): bf16 inference is then
    several times faster than float32; without it bf16 is emulated and slower."""
    return "amx_bf16" in cpu_flags()
