"""Stage 03 memory: peak RSS of ``image.run`` stays flat when the catalog grows fourfold.

Two catalogs of N and 4N sample-world posters (180x270 JPEGs, under /tmp, deleted after) are each
embedded by ``image.run`` in a fresh subprocess (tiny ResNet, default loader workers, batch 32).
Each subprocess reports its peak RSS (``ru_maxrss``) before the stage (imports done) and after it,
and the peak of its DataLoader worker processes. Holding every preprocessed image would add about
0.6 MB per poster (0.3 GB at N, 1.2 GB at 4N).

Prints `BENCH 03 image_rss_growth <peak RSS at 4N / peak RSS at N>` (main process; target ~1).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens.config import Config

N = 500


def config(root: Path) -> Config:
    return Config(data_dir=root, dataset="sample", sample_profile="bench", seed=0, device="cpu")


def write_world(root: Path, n: int, posters: list[bytes]) -> None:
    """A catalog of ``n`` movies, each with a poster (cycled from ``posters``)."""
    cfg = config(root)
    movies = pd.DataFrame({"movieId": np.arange(1, n + 1, dtype=np.int32),
                           "title": [f"Movie {i} (2000)" for i in range(1, n + 1)],
                           "genres": [["Drama"]] * n})
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    folder = artifacts.path(cfg, "posters_dir")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i + 1}.jpg").write_bytes(posters[i % len(posters)])


def sample_posters(k: int) -> list[bytes]:
    from mmlens.sample.posters import N_STYLES, jpeg_bytes, render_poster

    rng = np.random.default_rng(0)
    return [jpeg_bytes(render_poster(i % N_STYLES, f"Movie {i}", rng)) for i in range(k)]


def child(root: Path) -> None:
    """Run stage 03 on the catalog under ``root``; print peak RSS (kB) as json."""
    import torch  # noqa: F401  (imported before the first RSS reading)
    import transformers

    from mmlens.features import image

    tiny = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = image.run(config(root), model_config=tiny, batch_size=32)
    assert result["n_present"] == result["n_rows"], result
    print(json.dumps({"before_kb": before,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "n": result["n_rows"]}))


def measure(root: Path) -> dict[str, int]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mmlens-bench03-mem-"))
    try:
        posters = sample_posters(64)
        runs = {}
        for n in (N, 4 * N):
            write_world(tmp / str(n), n, posters)
            runs[n] = measure(tmp / str(n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n, r in runs.items():
        added = (r["peak_kb"] - r["before_kb"]) / 1024
        print(f"{n} posters: peak RSS {r['peak_kb'] / 1024:.0f} MB (after imports "
              f"{r['before_kb'] / 1024:.0f} MB, stage added {added:.0f} MB), "
              f"loader workers peak {r['workers_kb'] / 1024:.0f} MB")
    small, large = runs[N], runs[4 * N]
    print(f"BENCH 03 image_rss_growth {large['peak_kb'] / small['peak_kb']:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]))
    else:
        main()
