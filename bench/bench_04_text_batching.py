"""Stage 04 text pipeline against the model's forward pass and against upstream's approach.

On the same 1,000 synthetic synopses (one sample-world synopsis of 2-5 sentences each; one in ten
is four synopses long, over the 256-token window, so chunking is exercised):
- pipeline: mmlens' TextEncoder (tokenise, chunks sorted by length, batches of at most 64 chunks
  and, on CPU, 2,048 padded tokens, mean pooling) in its default precision (``auto``: bf16
  weights on a CPU with AMX, else fp32; printed);
- forward: the same model, in the same precision, forward pass alone on the same batches,
  tokenised and padded beforehand;
- upstream: one synopsis at a time, in catalogue order (batch size 1, unsorted, truncated at 256),
  float32 weights, as upstream ran it;
- fixed64: the pipeline with plain batches of 64 chunks (no token cap), as before the cap;
- fp32: the pipeline with float32 weights.

The machine is shared and noisy, so the synopses are cut into blocks and the three methods run on
each block in turn (rotating which goes first); each side's time is summed over the blocks.
Prints `BENCH 04 text_pipeline_vs_forward <ratio>` (throughput of pipeline / forward; target
>= 0.9), `BENCH 04 text_pipeline_vs_upstream <ratio>` (target >= 4),
`BENCH 04 text_token_cap_vs_fixed64 <ratio>` (throughput with / without the CPU token cap) and
`BENCH 04 text_precision_vs_fp32 <ratio>` (default precision / float32 weights) with the lowest
cosine between the two precisions' vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from mmlens._nb.feature_extraction_text import load_text_model
from mmlens.features.text import TextEncoder, default_model_dir
from mmlens.sample.synopses import TOPICS, synopsis

N_TEXTS = 1000
N_BLOCKS = 5
BATCH = 64
MAX_LENGTH = 256


def synthetic_synopses(n: int, seed: int = 0) -> list[str]:
    """``n`` sample-world synopses; every tenth is four of them joined (a long text)."""
    rng = np.random.default_rng(seed)

    def one() -> str:
        return synopsis(rng, int(rng.integers(len(TOPICS))), ["Drama"], int(rng.integers(2, 6)))

    return [" ".join(one() for _ in range(4 if i % 10 == 9 else 1)) for i in range(n)]


def padded_batches(encoder: TextEncoder, texts: list[str]) -> list[tuple[torch.Tensor, ...]]:
    """The pipeline's batches (its own batch plan), as (ids, mask) tensors."""
    chunks = [c for per_text in encoder.chunks(texts) for c in per_text]
    batches = []
    for plan in encoder.plan_batches([len(c) for c in chunks]):
        part = [chunks[j] for j in plan]
        ids = torch.zeros((len(part), max(map(len, part))), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(part):
            ids[i, :len(c)] = torch.tensor(c)
            mask[i, :len(c)] = 1
        batches.append((ids, mask))
    return batches


def main() -> None:
    torch.manual_seed(0)
    model_dir = str(default_model_dir())

    def load() -> torch.nn.Module:
        return load_text_model(model_dir)[1]

    tokenizer, model = load_text_model(model_dir)  # float32, for upstream's way
    texts = synthetic_synopses(N_TEXTS)
    options = {"max_length": MAX_LENGTH, "stride": 64, "batch_size": BATCH, "normalize": True,
               "device": "cpu"}
    encoder = TextEncoder(load(), tokenizer, texts, precision="auto", **options)
    exact = TextEncoder(load(), tokenizer, texts, precision="fp32", **options)

    def run(enc: TextEncoder, rows: np.ndarray) -> float:
        start = time.perf_counter()
        for _ in enc.encode(rows):
            pass
        return time.perf_counter() - start

    def pipeline(rows: np.ndarray) -> float:
        return run(encoder, rows)

    def fp32(rows: np.ndarray) -> float:
        return run(exact, rows)

    def forward(rows: np.ndarray) -> float:
        batches = padded_batches(encoder, [texts[r] for r in rows])  # not timed
        start = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in batches:
                encoder.model(input_ids=ids, attention_mask=mask)
        return time.perf_counter() - start

    def upstream(rows: np.ndarray) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for r in rows:
                enc = tokenizer(texts[r], return_tensors="pt", truncation=True,
                                max_length=MAX_LENGTH)
                hidden = model(**enc).last_hidden_state
                (hidden * enc["attention_mask"].unsqueeze(-1)).sum(1) / enc["attention_mask"].sum()
        return time.perf_counter() - start

    def fixed64(rows: np.ndarray) -> float:
        encoder.cpu_batch_tokens = None
        try:
            return pipeline(rows)
        finally:
            del encoder.cpu_batch_tokens  # back to the class default

    methods: dict[str, Callable[[np.ndarray], float]] = {
        "pipeline": pipeline, "forward": forward, "upstream": upstream, "fixed64": fixed64,
        "fp32": fp32}
    seconds = dict.fromkeys(methods, 0.0)
    pipeline(np.arange(8))  # warm-up
    names = list(methods)
    for k, rows in enumerate(np.array_split(np.arange(N_TEXTS), N_BLOCKS)):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotate the order
            seconds[name] += methods[name](rows)
    chunks = sum(map(len, encoder.chunks(texts)))
    sample = np.arange(0, N_TEXTS, 10)
    a, b = (np.concatenate([x.vectors for x in enc.encode(sample)]) for enc in (encoder, exact))
    print(f"{N_TEXTS} synopses ({chunks} chunks), {torch.get_num_threads()} torch threads, "
          f"precision {encoder.precision}: pipeline {seconds['pipeline']:.1f} s, forward only "
          f"{seconds['forward']:.1f} s, upstream (batch 1, unsorted, fp32) "
          f"{seconds['upstream']:.1f} s, fixed batches of 64 {seconds['fixed64']:.1f} s, "
          f"fp32 weights {seconds['fp32']:.1f} s; lowest cosine {encoder.precision} vs fp32 "
          f"{(a * b).sum(1).min():.5f}")
    print(f"BENCH 04 text_pipeline_vs_forward {seconds['forward'] / seconds['pipeline']:.3f}")
    print(f"BENCH 04 text_pipeline_vs_upstream {seconds['upstream'] / seconds['pipeline']:.3f}")
    print(f"BENCH 04 text_token_cap_vs_fixed64 {seconds['fixed64'] / seconds['pipeline']:.3f}")
    print(f"BENCH 04 text_precision_vs_fp32 {seconds['fp32'] / seconds['pipeline']:.3f}")


if __name__ == "__main__":
    main()
