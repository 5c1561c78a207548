"""The number format an encoder runs in: one rule for the poster and the synopsis encoders.

``auto`` is fp16 on CUDA, bf16 weights on a CPU with hardware bf16 matrix units (AMX: measured
about 2x the float32 throughput for MiniLM and 3x for ResNet-50 in channels-last layout, cosine
to the float32 vectors above 0.9999, bench_03/bench_04), and fp32 otherwise. The resolved value
is recorded in each table's metadata and is part of its cache key.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device`` (``cpu`` or ``cuda``)."""
    from mmlens.capabilities import cpu_has_fast_bf16

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device == "cuda":
            return "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def torch_dtype(resolved: str) -> Any:
    """The torch dtype of a resolved precision."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolved]
