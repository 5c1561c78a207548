"""Config resolution, the artifact contract and atomic writes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mmlens import artifacts
from mmlens.artifacts import MissingArtifactError, atomic_path, require
from mmlens.config import Config


def test_config_env_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MMLENS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMLENS_SAMPLE_PROFILE", "small")
    monkeypatch.setenv("MMLENS_SEED", "7")
    cfg = Config.from_env()
    assert cfg.data_dir == tmp_path.resolve()
    assert cfg.is_sample and cfg.seed == 7
    assert cfg.dataset_dir == tmp_path.resolve() / "sample-small"
    real = Config.from_env(dataset="ml-25m", seed=None)
    assert real.dataset_dir == tmp_path.resolve() / "ml-25m" and real.seed == 7
    assert Config.from_env(device="cpu").resolved_device() == "cpu"
    for available, device in ((True, "cuda"), (False, "cpu")):  # auto asks torch
        cuda = SimpleNamespace(is_available=lambda available=available: available)
        monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
        assert Config(device="auto").resolved_device() == device


def test_every_artifact_names_a_notebook_of_the_series() -> None:
    root = Path(__file__).resolve().parents[1]
    for art in artifacts.ARTIFACTS.values():
        assert (root / art.notebook()).is_file(), art.name
        for m, stage in artifacts.EXTRACTION_STAGES.items():
            assert (root / art.notebook(modality=m)).is_file(), art.name
            if "{modality}" in art.relpath and art.stage == "03":
                assert art.notebook(modality=m).startswith(stage)


def test_contract_by_stage_lists_every_artifact_once() -> None:
    listed = artifacts.by_stage()
    assert list(listed) == sorted(listed) and "03" not in listed and "04" not in listed
    assert "features/{modality}_embeddings.npy" in listed["03/04"]
    assert sorted(p for paths in listed.values() for p in paths) == \
        sorted(a.relpath for a in artifacts.ARTIFACTS.values())


def test_require_names_the_notebook(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    with pytest.raises(MissingArtifactError, match="01-Download-Convert"):
        require(cfg, "ratings")
    with pytest.raises(MissingArtifactError, match=r"04-Feature-Extraction-Text.*mmlens 04"):
        require(cfg, "embeddings", modality="text")
    with pytest.raises(MissingArtifactError, match=r"03-Feature-Extraction-Poster.*mmlens 03"):
        require(cfg, "embedding_meta", modality="poster")
    with pytest.raises(MissingArtifactError, match=r"05-Create-Feature-Store.*mmlens 05"):
        require(cfg, "pretrained", modality="text")  # a 05 artifact keeps its own stage
    p = artifacts.path(cfg, "ratings")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"x")
    assert require(cfg, "ratings") == p


def test_atomic_path_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    artifacts.write_parquet(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_atomic_path_replaces_directories(tmp_path: Path) -> None:
    target = tmp_path / "d"
    for content in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(content)
    assert (target / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
