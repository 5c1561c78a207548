"""Stage 03 image pipeline against the ResNet-50 forward pass alone.

On 192 poster-like JPEGs of 500x750 (TMDB's w500 size, generated under /tmp and deleted after):
- pipeline: mmlens' ImageEncoder.encode, the loop of ``image.run`` with its default settings
  (DataLoader workers decoding and preprocessing, ResNet-50 forward, pooling, batch 32);
- forward: the model's forward pass and pooling alone on the same posters, decoded beforehand.

Timed as forward (first half), pipeline (all), forward (second half) in one process, so machine
noise hits both sides. ResNet-50 is randomly initialised (weights do not change speed).
Prints `BENCH 03 image_pipeline_vs_forward <throughput of pipeline / forward>` (target >= 0.85).
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


def forward_only(model: ResNetModel, pixels: torch.Tensor) -> float:
    """Seconds for forward + pooling of pre-decoded ``pixels`` in batches of BATCH."""
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(pixels), BATCH):
            image.pooled(model(pixel_values=pixels[lo:lo + BATCH])).float().numpy()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="mmlens-bench03-"))
    try:
        paths = write_posters(folder, N_POSTERS)
        prep = image.Preprocessing()
        pixels = torch.from_numpy(np.stack([image.load_poster(p, prep) for p in paths]))
        model = ResNetModel(ResNetConfig()).eval()  # ResNet-50, random init
        workers = image.default_num_workers("cpu")
        encoder = image.ImageEncoder(model, paths, prep, batch_size=BATCH, num_workers=workers,
                                     device="cpu")
        forward_only(model, pixels[:BATCH])  # warm-up
        half = N_POSTERS // 2
        forward = forward_only(model, pixels[:half])
        start = time.perf_counter()
        n = sum(len(batch.rows) for batch in encoder.encode(np.arange(N_POSTERS)))
        pipeline = time.perf_counter() - start
        forward += forward_only(model, pixels[half:])
        assert n == N_POSTERS
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{N_POSTERS} posters {SIZE[0]}x{SIZE[1]}, batch {BATCH}, {workers} loader workers, "
          f"{torch.get_num_threads()} torch threads: pipeline {pipeline:.1f} s "
          f"({N_POSTERS / pipeline:.2f}/s), forward only {forward:.1f} s "
          f"({N_POSTERS / forward:.2f}/s)")
    print(f"BENCH 03 image_pipeline_vs_forward {forward / pipeline:.3f}")


if __name__ == "__main__":
    main()
