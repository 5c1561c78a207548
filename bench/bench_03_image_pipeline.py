"""Stage 03 image pipeline against the ResNet-50 forward pass alone.

On 192 poster-like JPEGs of 500x750 (TMDB's w500 size, generated under /tmp and deleted after):
- pipeline: mmlens' ImageEncoder.encode, the loop of ``image.run`` with its default settings
  (DataLoader workers decoding and preprocessing, ResNet-50 forward in the default precision,
  ``auto``: bf16 weights on a CPU with AMX, else fp32; channels-last; pooling, batch 32);
- forward: the same model, forward pass and pooling alone on the same posters, decoded
  beforehand (same dtype and layout);
- fp32: the pipeline with float32 weights (printed with the lowest cosine between the two).

Timed as forward (first half), pipeline (all), forward (second half) in one process, so machine
noise hits both sides. ResNet-50 is randomly initialised (weights do not change speed).
Prints `BENCH 03 image_pipeline_vs_forward <throughput of pipeline / forward>` (target >= 0.85)
and `BENCH 03 image_precision_vs_fp32 <throughput of pipeline / fp32 pipeline>`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

from mmlens._nb.feature_extraction_poster import embed_images
from mmlens.features import image
from mmlens.sample.posters import N_STYLES, jpeg_bytes, render_poster

N_POSTERS = 192
BATCH = 32
SIZE = (500, 750)


def write_posters(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` sample-world posters upscaled to 500x750 with grain (so JPEG decoding is real work)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = render_poster(i % N_STYLES, f"Movie {i}", rng).resize(SIZE, Image.Resampling.BICUBIC)
        grain = rng.integers(-16, 17, (SIZE[1], SIZE[0], 3))
        pixels = np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i}.jpg"
        path.write_bytes(jpeg_bytes(Image.fromarray(pixels, "RGB"), quality=90))
        paths.append(path)
    return paths


def forward_only(encoder: image.ImageEncoder, pixels: torch.Tensor) -> float:
    """Seconds for forward + pooling of pre-decoded ``pixels`` in batches of BATCH, with the
    encoder's model, dtype and layout."""
    pixels = pixels.to(encoder.dtype).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    for lo in range(0, len(pixels), BATCH):
        embed_images(encoder.model, pixels[lo:lo + BATCH]).float().numpy()
    return time.perf_counter() - start


def encode_all(encoder: image.ImageEncoder) -> tuple[float, np.ndarray]:
    """Seconds for the whole pipeline over every poster, and the vectors."""
    start = time.perf_counter()
    vectors = np.concatenate([b.vectors for b in encoder.encode(np.arange(N_POSTERS))])
    return time.perf_counter() - start, vectors


def main() -> None:
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="mmlens-bench03-"))
    try:
        paths = write_posters(folder, N_POSTERS)
        prep = image.Preprocessing()
        pixels = torch.from_numpy(np.stack([image.load_poster(p, prep) for p in paths]))
        model = ResNetModel(ResNetConfig()).eval()  # ResNet-50, random init
        exact_model = ResNetModel(ResNetConfig()).eval()
        exact_model.load_state_dict(model.state_dict())
        workers = image.default_num_workers("cpu")
        options = {"batch_size": BATCH, "num_workers": workers, "device": "cpu"}
        encoder = image.ImageEncoder(model, paths, prep, precision="auto", **options)
        exact = image.ImageEncoder(exact_model, paths, prep, precision="fp32", **options)
        forward_only(encoder, pixels[:BATCH])  # warm-up
        half = N_POSTERS // 2
        forward = forward_only(encoder, pixels[:half])
        pipeline, vectors = encode_all(encoder)
        forward += forward_only(encoder, pixels[half:])
        fp32, exact_vectors = encode_all(exact)
        assert len(vectors) == N_POSTERS
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cosine = (vectors * exact_vectors).sum(1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(exact_vectors, axis=1))
    print(f"{N_POSTERS} posters {SIZE[0]}x{SIZE[1]}, batch {BATCH}, {workers} loader workers, "
          f"{torch.get_num_threads()} torch threads, precision {encoder.precision}: pipeline "
          f"{pipeline:.1f} s ({N_POSTERS / pipeline:.2f}/s), forward only {forward:.1f} s "
          f"({N_POSTERS / forward:.2f}/s), fp32 pipeline {fp32:.1f} s; lowest cosine "
          f"{encoder.precision} vs fp32 {cosine.min():.5f}")
    print(f"BENCH 03 image_pipeline_vs_forward {forward / pipeline:.3f}")
    print(f"BENCH 03 image_precision_vs_fp32 {fp32 / pipeline:.3f}")


if __name__ == "__main__":
    main()
