"""Stage 04 memory: peak RSS of ``text.run`` stays flat when the catalog grows fourfold.

Two catalogs of N and 4N sample-world synopses are each embedded by ``text.run`` in a fresh
subprocess, with a tiny randomly initialised BERT (all-MiniLM-L6-v2's tokenizer) saved under /tmp,
so the run is quick and the model's own memory small. Each subprocess reports its peak RSS
(``ru_maxrss``) before the stage (imports done) and after it. N is one block of texts
(``text.TEXTS_PER_BLOCK``): the stage tokenises and encodes block by block.

Prints `BENCH 04 text_rss_growth <peak RSS at 4N / peak RSS at N>` (target ~1).
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

N = 1024


def config(root: Path) -> Config:
    return Config(data_dir=root, dataset="sample", sample_profile="bench", seed=0, device="cpu")


def write_world(root: Path, n: int) -> None:
    """A catalog of ``n`` movies, each with a synopsis of 2-5 sentences."""
    from mmlens.sample.synopses import TOPICS, synopsis

    cfg = config(root)
    rng = np.random.default_rng(n)
    ids = np.arange(1, n + 1, dtype=np.int32)
    movies = pd.DataFrame({"movieId": ids, "title": [f"Movie {i} (2000)" for i in ids],
                           "genres": [["Drama"]] * n})
    artifacts.write_parquet(movies, artifacts.path(cfg, "movies"))
    texts = [synopsis(rng, int(rng.integers(len(TOPICS))), ["Drama"], int(rng.integers(2, 6)))
             for _ in range(n)]
    synopses = pd.DataFrame({"movieId": ids, "synopsis": texts, "source": "bench"})
    artifacts.write_parquet(synopses, artifacts.path(cfg, "synopses"))


def write_tiny_model(folder: Path) -> None:
    """A 2-layer, 64-wide BERT with random weights and MiniLM's tokenizer."""
    import torch
    import transformers

    from mmlens.features.text import default_model_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=512)
    transformers.BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def child(root: Path, model_dir: Path) -> None:
    """Run stage 04 on the catalog under ``root``; print peak RSS (kB) as json."""
    import torch  # noqa: F401  (imported before the first RSS reading)

    from mmlens.features import text

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = text.run(config(root), model_id=str(model_dir), max_length=256)
    assert result["n_present"] == result["n_rows"], result
    print(json.dumps({"before_kb": before,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "n": result["n_rows"]}))


def measure(root: Path, model_dir: Path) -> dict[str, int]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(root), str(model_dir)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mmlens-bench04-mem-"))
    try:
        write_tiny_model(tmp / "model")
        runs = {}
        for n in (N, 4 * N):
            write_world(tmp / str(n), n)
            runs[n] = measure(tmp / str(n), tmp / "model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for n, r in runs.items():
        added = (r["peak_kb"] - r["before_kb"]) / 1024
        print(f"{n} synopses: peak RSS {r['peak_kb'] / 1024:.0f} MB (after imports "
              f"{r['before_kb'] / 1024:.0f} MB, stage added {added:.0f} MB)")
    print(f"BENCH 04 text_rss_growth {runs[4 * N]['peak_kb'] / runs[N]['peak_kb']:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
