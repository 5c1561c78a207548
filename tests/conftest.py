"""Fixtures shared by the stage tests: the small sample world, its truth table, its mirror.

A module that needs another world (another seed, say) defines its own ``world`` fixture; the
``truth`` and ``mirror`` fixtures below then use that one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mmlens.config import Config
from mmlens.sample import ensure_world, serve
from mmlens.sample.mirror import Mirror


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small-profile sample world with the default seed."""
    return ensure_world(Config(data_dir=tmp_path_factory.mktemp("world"), sample_profile="small"))


@pytest.fixture(scope="module")
def truth(world: Path) -> pd.DataFrame:
    """What the world generator knows about each movie (poster, synopsis, faults)."""
    return pd.read_parquet(world / "truth" / "movies.parquet")


@pytest.fixture()
def mirror(world: Path) -> Iterator[Mirror]:
    """The world's local mirror, serving on 127.0.0.1 for one test."""
    with serve(world) as m:
        yield m
