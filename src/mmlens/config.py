"""One place for the data directory, dataset, sample profile, device and seed.

Values come from keyword overrides (a notebook's parameters cell, CLI flags), then environment
variables, then defaults:

- ``MMLENS_DATA_DIR``  where every dataset lives (default ``./data``)
- ``MMLENS_DATASET``   ``sample`` (the synthetic world, default) or a MovieLens release name
- ``MMLENS_SAMPLE_PROFILE``  ``default`` (~600 movies) or ``small`` (for tests)
- ``MMLENS_SEED``      global seed (default 42)
- ``MMLENS_DEVICE``    ``auto``, ``cpu`` or ``cuda``
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SAMPLE_DATASET = "sample"


@dataclass(frozen=True)
class Config:
    """Where a run reads and writes, and how it behaves."""

    data_dir: Path = field(default_factory=lambda: Path("data"))
    dataset: str = SAMPLE_DATASET
    sample_profile: str = "default"
    seed: int = 42
    device: str = "auto"

    @classmethod
    def from_env(cls, **overrides: object) -> Config:
        """Build a config from environment variables, with explicit overrides winning."""
        env = os.environ
        values: dict[str, object] = {
            "data_dir": Path(env.get("MMLENS_DATA_DIR", "data")),
            "dataset": env.get("MMLENS_DATASET", SAMPLE_DATASET),
            "sample_profile": env.get("MMLENS_SAMPLE_PROFILE", "default"),
            "seed": int(env.get("MMLENS_SEED", "42")),
            "device": env.get("MMLENS_DEVICE", "auto"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Config:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def is_sample(self) -> bool:
        return self.dataset == SAMPLE_DATASET

    @property
    def dataset_dir(self) -> Path:
        """Root of every artifact of this dataset: ``DATA_DIR/<dataset>``."""
        name = f"{self.dataset}-{self.sample_profile}" if self.is_sample else self.dataset
        return self.data_dir / name

    def resolved_device(self) -> str:
        """``cuda`` when asked for or available under ``auto``, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and (when imported) torch and tensorflow."""
    import sys

    random.seed(seed)
    np.random.seed(seed)
    torch, tf = sys.modules.get("torch"), sys.modules.get("tensorflow")  # None: not importable
    if torch is not None:
        torch.manual_seed(seed)
    if tf is not None:
        tf.random.set_seed(seed)
