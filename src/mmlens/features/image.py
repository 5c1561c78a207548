"""Stage 03: poster embeddings with a pretrained image encoder (ResNet-50 by default).

The subject code (loading the model, the ImageNet preprocessing, the forward pass and the pooling)
lives in notebook 03's ``#@save`` cells, exported to :mod:`mmlens._nb.feature_extraction_poster`;
this module runs it over the catalog: where the weights come from, posters decoded in DataLoader
workers, precision, caching.

Weights: a real run (any dataset but the sample) loads pretrained weights from ``weights_dir``, the
Hugging Face cache or the model hub, or stops with :class:`~mmlens.features.weights.
WeightsUnavailableError` (one line saying how to provide them). A random init happens only in
sample mode (its default) or with ``random_init=True`` / ``model_config``; the model is then
labelled ``"ResNet-50 (random init)"`` in the metadata's ``model_id``, the stage's summary and every
figure, and the metadata says ``"weights": "random"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mmlens import artifacts
from mmlens._nb.feature_extraction_poster import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESAMPLE,
    RESNET50_ID,
    embed_images,
    load_image_model,
    preprocess,
    to_rgb,
)
from mmlens.config import Config
from mmlens.features import outputs, weights
from mmlens.features.outputs import Batch
from mmlens.features.precision import resolve_precision, torch_dtype

__all__ = ["preprocess", "to_rgb", "run"]

DEFAULT_MODEL_ID = RESNET50_ID
ARCHITECTURES = {RESNET50_ID: "ResNet-50"}  # the name of a model id's architecture, for labels
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocessing:
    """The ImageNet evaluation transform's settings; part of the cache key of the embeddings."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop > self.resize or self.crop < 1:
            raise ValueError(f"crop ({self.crop}) must be in 1..resize ({self.resize})")
        if self.interpolation not in RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(RESAMPLE)}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "background": "white",
                "steps": "to_rgb, resize_shorter, center_crop, /255, normalize",
                "layout": "CHW float32"}


def load_poster(path: Path, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """Decode and preprocess one poster file; raises on unreadable or corrupt files."""
    with Image.open(path) as image:
        image.load()
        return preprocess(image, prep.resize, prep.crop, prep.interpolation)


class PosterDataset:
    """Map-style dataset for a torch DataLoader: (row, pixels, error) per poster."""

    def __init__(self, items: list[tuple[int, str]], prep: Preprocessing) -> None:
        self.items = items
        self.prep = prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, str]:
        row, path = self.items[i]
        try:
            return row, load_poster(Path(path), self.prep), ""
        except DECODE_ERRORS as exc:
            blank = np.zeros((3, self.prep.crop, self.prep.crop), dtype=np.float32)
            message = str(exc).replace(path, Path(path).name)  # no machine-specific paths
            return row, blank, f"{type(exc).__name__}: {message}"[:300]


# ------------------------------------------------------------------------------------------ model


@dataclass
class ImageModelSource:
    """Where the encoder's weights come from, known before anything heavy is loaded."""

    model_id: str
    label: str  # what figures and metadata call the model: the id, or "... (random init)"
    folder: Path | None  # pretrained weights; None: random init
    origin: str  # "folder", "cache", "hub", or why the model is randomly initialised
    config: Any = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.folder is None

    @property
    def weights(self) -> str | None:
        """What :func:`load_image_model` takes: the weights folder, None for a random init."""
        return None if self.folder is None else str(self.folder)

    def load(self) -> Any:
        """The encoder in eval mode (pretrained weights, or the seeded random init)."""
        return load_image_model(self.weights, self.config, seed=self.seed)


def resolve_model(cfg: Config, model_id: str = DEFAULT_MODEL_ID,
                  weights_dir: Path | str | None = None, *, random_init: bool | None = None,
                  model_config: Any = None) -> ImageModelSource:
    """Locate the weights (or plan a labelled random init) and describe them for the cache key.

    ``random_init=None`` means: random init in sample mode (unless ``weights_dir`` is given),
    pretrained weights otherwise. ``model_config`` (a transformers config) forces a random init of
    that architecture: small configs make fast tests through the same code path.
    """
    if random_init is None:
        random_init = model_config is not None or (cfg.is_sample and weights_dir is None)
    if random_init or model_config is not None:
        return _random_source(cfg, model_id, model_config)
    found = weights.locate(model_id, weights_dir, what="poster encoder")
    if found.folder is None:
        raise weights.unavailable("poster encoder", model_id, found.origin, "weights_dir",
                                  also="; or random_init=True for a random-init model, labelled so")
    settings = {"model_id": model_id,
                "weights": outputs.sha256_files(weights.weight_files(found.folder)),
                "architecture": outputs.sha256_file(found.folder / "config.json")}
    return ImageModelSource(model_id, model_id, found.folder, found.origin, seed=cfg.seed,
                            settings=settings)


def _random_source(cfg: Config, model_id: str, model_config: Any) -> ImageModelSource:
    if model_config is not None:
        name = type(model_config).__name__.removesuffix("Config")
        label, config, why = f"{name} (random init, custom config)", model_config, "model_config"
    else:
        label = f"{ARCHITECTURES.get(model_id, model_id)} (random init)"
        config = _architecture(model_id)
        why = "sample mode" if cfg.is_sample else "random_init=True"
    settings = {"model_id": label, "weights": "random", "random_init_seed": cfg.seed,
                "architecture": outputs.sha256_json(config.to_dict()), "config_source":
                "model_config option" if model_config is not None else model_id}
    return ImageModelSource(model_id, label, None, why, config=config, seed=cfg.seed,
                            settings=settings)


def _architecture(model_id: str) -> Any:
    """The config of ``model_id`` without its weights (ResNet-50's needs no network)."""
    from transformers import AutoConfig, ResNetConfig

    if model_id == RESNET50_ID:
        return ResNetConfig()  # its defaults are ResNet-50
    found = weights.locate(model_id, what="poster encoder")
    if found.folder is None:
        raise weights.unavailable("poster encoder", model_id, found.origin, "weights_dir")
    return AutoConfig.from_pretrained(str(found.folder))


def model_dim(config: Any) -> int:
    """Width of the pooled output: last stage of a CNN, or the hidden size of a transformer."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


class ImageEncoder:
    """An image model bound to the catalog's poster paths (see :class:`outputs.Encoder`)."""

    def __init__(self, model: Any, paths: list[Path], prep: Preprocessing, *, batch_size: int,
                 num_workers: int, device: str, precision: str = "fp32") -> None:
        import torch

        self.precision = resolve_precision(precision, device)
        self.dtype = torch_dtype(self.precision)
        # channels-last: the layout oneDNN's and cuDNN's fastest convolutions use
        self.model = model.to(device=device, dtype=self.dtype,
                              memory_format=torch.channels_last).eval()
        self.paths = paths
        self.prep = prep
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.dim = model_dim(model.config)
        self.info = {"device": device, "batch_size": batch_size, "num_workers": num_workers,
                     "precision": self.precision}

    def encode(self, rows: np.ndarray) -> Iterator[Batch]:
        import torch
        from torch.utils.data import DataLoader

        dataset = PosterDataset([(int(r), str(self.paths[r])) for r in rows], self.prep)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False,  # type: ignore[arg-type]
                            num_workers=self.num_workers, pin_memory=self.device == "cuda")
        cuda = self.device == "cuda"
        for batch_rows, pixels, errors in loader:
            pixels = pixels.to(self.device, self.dtype, non_blocking=cuda)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            vectors = embed_images(self.model, pixels).float().cpu().numpy()
            yield Batch(batch_rows.numpy(), vectors, [e or None for e in errors])


# ------------------------------------------------------------------------------------------ stage


def default_num_workers(device: str) -> int:
    """DataLoader worker processes that decode and preprocess posters.

    On CPU, 2 (or 1 on a 1-core machine): decoding a 500x750 JPEG costs about 3% of a float32
    ResNet-50 forward there; with bf16 weights on AMX (2-3x faster) 2 workers still keep the
    pipeline at 0.87-1.08x the forward pass alone on 2 cores (``bench_03_image_pipeline``).
    On CUDA the forward pass is far faster than decoding, so up to 8 workers, one core left free.
    """
    cores = os.cpu_count() or 1
    if device == "cuda":
        return max(1, min(8, cores - 1))
    return min(2, cores)


def poster_inputs(cfg: Config, movie_ids: np.ndarray) -> tuple[list[Path], list[str | None],
                                                               list[str | None]]:
    """Per catalog row: poster path, content sha256 (None = no file), and a stat signature."""
    posters_dir = artifacts.require(cfg, "posters_dir")
    previous = outputs.previous_inputs(cfg, "poster")
    paths, hashes, stats = [], [], []
    for movie_id in tqdm(movie_ids.tolist(), desc="hash posters", unit="file", leave=False):
        path = posters_dir / f"{movie_id}.jpg"
        paths.append(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            hashes.append(None)
            stats.append(None)
            continue
        stat = f"{st.st_size}:{st.st_mtime_ns}"
        known = previous.get(movie_id)
        hashes.append(known[1] if known and known[0] == stat else outputs.sha256_file(path))
        stats.append(stat)
    return paths, hashes, stats


def run(cfg: Config, *, model_id: str = DEFAULT_MODEL_ID, weights_dir: str | Path | None = None,
        random_init: bool | None = None, batch_size: int = 32, num_workers: int | None = None,
        shard: tuple[int, int] | str | None = None, resize: int = 256, crop: int = 224,
        model_config: Any = None, pca_dim: int | None = None, merge: bool = False,
        precision: str = "auto") -> dict[str, Any]:
    """Embed every catalog poster; writes the ``embeddings/embedding_index/embedding_meta``
    artifacts of modality ``poster`` (or one shard of them with ``shard=(i, n)``).

    ``weights_dir`` is a folder with ``config.json`` and the weights of ``model_id``; without it
    they come from the Hugging Face cache or the hub (:func:`resolve_model`, ``random_init``).
    ``pca_dim`` additionally writes a PCA-reduced copy (artifact ``embeddings_pca``);
    ``merge=True`` only joins earlier shard runs (:func:`outputs.merge_shards`). ``precision``
    is the encoder's number format (:func:`~mmlens.features.precision.resolve_precision`).
    Prints one summary line; returns a summary dict (status ``computed``, ``up to date`` or
    ``merged``, counts, paths).
    """
    if merge:  # after every shard=(i, n) run: join them into the final table
        return outputs.merge_shards(cfg, "poster")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prep = Preprocessing(resize=resize, crop=crop)
    movie_ids = outputs.read_catalog(cfg)
    source = resolve_model(cfg, model_id, weights_dir, random_init=random_init,
                           model_config=model_config)
    paths, hashes, stats = poster_inputs(cfg, movie_ids)
    device = cfg.resolved_device()
    resolved = resolve_precision(precision, device)
    settings = {**source.settings, "preprocessing": prep.as_dict(), "precision": resolved,
                "pooling": "pooler_output flattened (global average pool)", "normalized": False}

    def open_encoder() -> ImageEncoder:
        if source.is_random:
            print(f"poster encoder: {source.label}, seed {source.seed} ({source.origin}): "
                  "these vectors carry no pretrained knowledge", flush=True)
        workers = default_num_workers(device) if num_workers is None else int(num_workers)
        return ImageEncoder(source.load(), paths, prep, batch_size=batch_size,
                            num_workers=workers, device=device, precision=resolved)

    extra = {"weights_path": source.weights, "weights_origin": source.origin,
             "architecture_id": model_id}
    result = outputs.build_table(cfg, "poster", movie_ids=movie_ids, item_hashes=hashes,
                                 settings=settings, open_encoder=open_encoder, shard=shard,
                                 item_stats=stats, extra_meta=extra)
    if pca_dim and shard is None:
        from mmlens.features.reduce import write_pca

        result["pca"] = write_pca(cfg, "poster", int(pca_dim))
    return result
