"""Capability checks look without crashing and agree with this machine."""

from __future__ import annotations

import pytest

from mmlens import capabilities


def test_report_keys_and_types() -> None:
    rep = capabilities.report()
    assert isinstance(rep["gpus"], int)
    assert rep["nvtabular"] is True and rep["torch"] is True


def test_no_gpu_means_no_cudf_or_hugectr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "gpu_count", lambda: 0)
    monkeypatch.setattr(capabilities, "installed", lambda module: True)
    assert not capabilities.has_cudf() and not capabilities.has_hugectr()


def test_gpu_and_package_means_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "gpu_count", lambda: 1)
    monkeypatch.setattr(capabilities, "installed", lambda module: module == "hugectr")
    assert capabilities.has_hugectr() and not capabilities.has_cudf()
