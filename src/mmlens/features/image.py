"""Stage 03: poster embeddings with a pretrained image encoder (ResNet-50 by default).

Weights come from ``weights_dir`` or the local Hugging Face cache, never from the network. When
neither has them and ``allow_random_init`` is set, the model is built from its config with seeded
random weights, a loud warning is printed and the metadata says ``"weights": "random"``.

Preprocessing is torchvision's ImageNet evaluation transform written with PIL and numpy:
Resize(256) of the shorter side (bilinear), CenterCrop(224), scale to [0, 1], Normalize with the
ImageNet mean and std. Palette, grayscale, CMYK and alpha images become RGB (alpha over white).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mmlens import artifacts
from mmlens.config import Config
from mmlens.features import outputs
from mmlens.features.outputs import Batch
from mmlens.features.precision import resolve_precision, torch_dtype

DEFAULT_MODEL_ID = "microsoft/resnet-50"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Preprocessing:
    """The ImageNet evaluation transform; part of the cache key of the embeddings."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    background: str = "white"

    def __post_init__(self) -> None:
        if self.crop > self.resize or self.crop < 1:
            raise ValueError(f"crop ({self.crop}) must be in 1..resize ({self.resize})")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": "to_rgb, resize_shorter, center_crop, /255, normalize",
                "layout": "CHW float32"}


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any PIL image: EXIF rotation applied, transparency composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max() or 1.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if "A" in image.getbands():
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shorter(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Scale so that the shorter side is ``size`` (the longer side truncated, as torchvision)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return image.resize((new_w, new_h), _RESAMPLE[interpolation])


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` window of an HWC array (torchvision's rounding)."""
    h, w = pixels.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return pixels[top:top + size, left:left + size]


def preprocess(image: Image.Image, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """A PIL image as the model's input: float32 array [3, crop, crop]."""
    resized = resize_shorter(to_rgb(image), prep.resize, prep.interpolation)
    pixels = center_crop(np.asarray(resized, dtype=np.float32), prep.crop) / 255.0
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def load_poster(path: Path, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """Decode and preprocess one poster file; raises on unreadable or corrupt files."""
    with Image.open(path) as image:
        image.load()
        return preprocess(image, prep)


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
    weights_path: Path | None
    config: Any = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def is_random(self) -> bool:
        return self.weights_path is None

    def load(self) -> Any:
        """The encoder in eval mode (weights from disk, or seeded random init)."""
        import torch
        from transformers import AutoModel

        if self.weights_path is not None:
            model = AutoModel.from_pretrained(str(self.weights_path), local_files_only=True)
        else:
            torch.manual_seed(self.seed)
            model = AutoModel.from_config(self.config)
        return model.eval()


def find_local_weights(model_id: str, weights_dir: Path | str | None) -> Path | None:
    """A directory holding config.json and weights for ``model_id``, without the network."""
    if weights_dir is not None:
        path = Path(weights_dir).expanduser()
        if not (path / "config.json").exists() or not _weight_files(path):
            raise FileNotFoundError(f"weights_dir {path} needs config.json and *.safetensors/*.bin")
        return path
    if Path(model_id).expanduser().is_dir():
        return find_local_weights(model_id, Path(model_id))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return path if (path / "config.json").exists() and _weight_files(path) else None


def _weight_files(path: Path) -> list[Path]:
    return [p for pattern in WEIGHT_PATTERNS for p in sorted(path.glob(pattern))]


def resolve_model(model_id: str, weights_dir: Path | str | None, *, allow_random_init: bool,
                  seed: int, model_config: Any = None) -> ImageModelSource:
    """Locate weights (or plan a random init) and describe them for the cache key.

    ``model_config`` (a transformers config) forces a random init of that architecture: small
    configs make fast tests through the same code path.
    """
    weights_path = None if model_config is not None else find_local_weights(model_id, weights_dir)
    if weights_path is not None:
        settings = {"weights": outputs.sha256_files(_weight_files(weights_path)),
                    "architecture": outputs.sha256_file(weights_path / "config.json")}
        return ImageModelSource(model_id, weights_path, settings=settings)
    if not allow_random_init:
        raise FileNotFoundError(
            f"no local weights for {model_id!r} (looked in weights_dir and the Hugging Face cache; "
            "the network is never used). Pass weights_dir=<dir with config.json + weights> or "
            "allow_random_init=True.")
    config = model_config if model_config is not None else _offline_config(model_id)
    settings = {"weights": "random", "random_init_seed": seed,
                "architecture": outputs.sha256_json(config.to_dict()),
                "config_source": "model_config option" if model_config is not None else model_id}
    return ImageModelSource(model_id, None, config=config, seed=seed, settings=settings)


def _offline_config(model_id: str) -> Any:
    from transformers import AutoConfig, ResNetConfig

    with contextlib.suppress(OSError, ValueError):
        return AutoConfig.from_pretrained(model_id, local_files_only=True)
    if model_id == DEFAULT_MODEL_ID:
        return ResNetConfig()  # its defaults are ResNet-50
    raise FileNotFoundError(f"no local config for {model_id!r}: pass weights_dir or model_config")


def model_dim(config: Any) -> int:
    """Width of the pooled output: last stage of a CNN, or the hidden size of a transformer."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


def pooled(output: Any) -> Any:
    """The image vector of a model output: pooler_output flattened (mean of tokens otherwise)."""
    pooled_output = getattr(output, "pooler_output", None)
    if pooled_output is not None:
        return pooled_output.flatten(1)
    hidden = output.last_hidden_state
    return hidden.mean(dim=tuple(range(2, hidden.ndim))) if hidden.ndim == 4 else hidden.mean(1)


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
        with torch.inference_mode():
            for batch_rows, pixels, errors in loader:
                pixels = pixels.to(self.device, self.dtype, non_blocking=cuda)
                out = self.model(pixel_values=pixels.contiguous(memory_format=torch.channels_last))
                vectors = pooled(out).float().cpu().numpy()
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
        batch_size: int = 32, num_workers: int | None = None, allow_random_init: bool = True,
        shard: tuple[int, int] | str | None = None, resize: int = 256, crop: int = 224,
        model_config: Any = None, pca_dim: int | None = None, merge: bool = False,
        precision: str = "auto") -> dict[str, Any]:
    """Embed every catalog poster; writes the ``embeddings/embedding_index/embedding_meta``
    artifacts of modality ``poster`` (or one shard of them with ``shard=(i, n)``).

    ``pca_dim`` additionally writes a PCA-reduced copy (artifact ``embeddings_pca``);
    ``merge=True`` only joins earlier shard runs (:func:`outputs.merge_shards`). ``precision``
    is the encoder's number format (:func:`~mmlens.features.precision.resolve_precision`).
    Returns a summary dict (status ``computed``, ``up to date`` or ``merged``, counts, paths).
    """
    if merge:  # after every shard=(i, n) run: join them into the final table
        return outputs.merge_shards(cfg, "poster")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prep = Preprocessing(resize=resize, crop=crop)
    movie_ids = outputs.read_catalog(cfg)
    paths, hashes, stats = poster_inputs(cfg, movie_ids)
    source = resolve_model(model_id, weights_dir, allow_random_init=allow_random_init,
                           seed=cfg.seed, model_config=model_config)
    device = cfg.resolved_device()
    resolved = resolve_precision(precision, device)
    settings = {"model_id": model_id, **source.settings, "preprocessing": prep.as_dict(),
                "precision": resolved,
                "pooling": "pooler_output flattened (global average pool)", "normalized": False}

    def open_encoder() -> ImageEncoder:
        if source.is_random:
            _warn_random(model_id)
        workers = default_num_workers(device) if num_workers is None else int(num_workers)
        return ImageEncoder(source.load(), paths, prep, batch_size=batch_size,
                            num_workers=workers, device=device, precision=resolved)

    extra = {"weights_path": str(source.weights_path) if source.weights_path else None}
    result = outputs.build_table(cfg, "poster", movie_ids=movie_ids, item_hashes=hashes,
                                 settings=settings, open_encoder=open_encoder, shard=shard,
                                 item_stats=stats, extra_meta=extra)
    if source.is_random:
        print(f"WARNING: poster embeddings of {model_id} use RANDOM weights (no local weights).")
    if pca_dim and shard is None:
        from mmlens.features.reduce import write_pca

        result["pca"] = write_pca(cfg, "poster", int(pca_dim))
    return result


def _warn_random(model_id: str) -> None:
    bar = "!" * 78
    print(f"{bar}\nWARNING: no local weights used for {model_id}: RANDOMLY INITIALISED model "
          "(seeded).\nThese poster embeddings carry no pretrained knowledge. Pass weights_dir= "
          "a directory\nwith config.json + model.safetensors to use real weights.\n"
          f"{bar}", flush=True)
