"""The machine a benchmark runs on, in one line: a ratio measured on one CPU says little about
another (the README's bench_08 runs differ by CPU). Not a benchmark itself."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

#: instruction sets that change what a float32 matmul costs, narrowest first
ISA_FLAGS = ("avx2", "avx512f", "amx_tile")


def cpu_info(text: str) -> tuple[str, set[str]]:
    """The CPU's model name and flags from the text of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields.get("model name", ""), set(fields.get("flags", "").split())


def describe() -> str:
    """``machine: <CPU model>, <n> cores, <ISA flags>``; where TensorFlow is loaded, whether its
    oneDNN kernels are on (and oneDNN's ISA cap where one is set)."""
    try:
        model, flags = cpu_info(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = "", set()
    isa = "+".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"machine: {model or platform.processor() or 'unknown CPU'}, {cores} cores, {isa}"
    if "tensorflow" in sys.modules:  # loaded already: whether it runs oneDNN's kernels
        from tensorflow.python.util import _pywrap_util_port

        line += f"; TensorFlow oneDNN {'on' if _pywrap_util_port.IsMklEnabled() else 'off'}"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{line}, capped at {cap}" if cap else line


if __name__ == "__main__":
    print(describe())
