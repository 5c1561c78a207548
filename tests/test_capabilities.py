"""Capability checks look without crashing and agree with this machine."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from mmlens import capabilities


def test_report_agrees_with_this_machine() -> None:
    rep = capabilities.report()
    packages = ("torch", "tensorflow", "transformers", "nvtabular")
    assert set(rep) == {"gpus", "cudf", "hugectr", *packages}
    assert type(rep["gpus"]) is int and all(type(v) is bool for k, v in rep.items() if k != "gpus")
    for name in packages:
        assert rep[name] == (importlib.util.find_spec(name) is not None), name
    assert (rep["cudf"], rep["hugectr"]) == (capabilities.has_cudf(), capabilities.has_hugectr())
    if shutil.which("nvidia-smi") is None:
        assert rep["gpus"] == 0 and not rep["cudf"] and not rep["hugectr"]


def test_no_gpu_means_no_cudf_or_hugectr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "gpu_count", lambda: 0)
    monkeypatch.setattr(capabilities, "installed", lambda module: True)
    assert not capabilities.has_cudf() and not capabilities.has_hugectr()


@pytest.mark.parametrize("package", ["cudf", "hugectr"])
def test_gpu_and_package_means_usable(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setattr(capabilities, "gpu_count", lambda: 1)
    monkeypatch.setattr(capabilities, "installed", lambda module: module == package)
    usable = {"cudf": capabilities.has_cudf(), "hugectr": capabilities.has_hugectr()}
    assert usable == {name: name == package for name in usable}
