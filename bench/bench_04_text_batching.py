"""Stage 04 text pipeline against the model's forward pass and against upstream's approach.

On the same 1,000 synthetic synopses (lengths vary from one to twelve sentences):
- pipeline: mmlens' TextEncoder (chunks sorted by length, batches of 64, mean pooling);
- forward: the model's forward pass alone on the same batches, tokenised beforehand;
- upstream: one synopsis at a time, in catalogue order (batch size 1, unsorted).

Prints `BENCH 04 text_pipeline_vs_forward <ratio>` (throughput of pipeline / forward; target
>= 0.9) and `BENCH 04 text_pipeline_vs_upstream <ratio>` (target >= 4), measured in one run.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from mmlens.features.text import TextEncoder, default_model_dir
from mmlens.sample.synopses import synopsis

N_TEXTS = 1000
BATCH = 64


def synthetic_synopses(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [synopsis(rng, int(rng.integers(8)), ["Drama"], int(rng.integers(1, 13)))
            for _ in range(n)]


def main() -> None:
    torch.manual_seed(0)
    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    texts = synthetic_synopses(N_TEXTS)
    encoder = TextEncoder(model, tokenizer, texts, max_length=256, stride=64, batch_size=BATCH,
                          normalize=True, device="cpu")
    rows = np.arange(len(texts))

    start = time.perf_counter()
    for _ in encoder.encode(rows):
        pass
    pipeline = time.perf_counter() - start

    chunks = sorted((c for t in texts for c in encoder.chunks(t)), key=len)
    batches = []
    for lo in range(0, len(chunks), BATCH):
        part = chunks[lo:lo + BATCH]
        ids = torch.zeros((len(part), max(map(len, part))), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(part):
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1
        batches.append((ids, mask))
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    forward = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(**enc).last_hidden_state
            (hidden * enc["attention_mask"].unsqueeze(-1)).sum(1) / enc["attention_mask"].sum()
    upstream = time.perf_counter() - start

    print(f"{N_TEXTS} synopses: pipeline {pipeline:.2f} s, forward only {forward:.2f} s, "
          f"upstream (batch 1, unsorted) {upstream:.2f} s")
    print(f"BENCH 04 text_pipeline_vs_forward {forward / pipeline:.3f}")
    print(f"BENCH 04 text_pipeline_vs_upstream {upstream / pipeline:.3f}")


if __name__ == "__main__":
    main()
