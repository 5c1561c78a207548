"""Writing a per-movie embedding table (stages 03 and 04): cache, incremental reuse, shards.

One table per modality: ``<modality>_embeddings.npy`` (float32, one row per catalog movie in
``movies.parquet`` order, zeros where the input is missing), ``<modality>_index.parquet`` (row,
movieId, has_<modality>, status, error, input_sha256, input_stat) and ``<modality>_meta.json``.

The meta json is the commit marker: it is deleted before and written after the other two files, so
an interrupted run never passes for complete. A run whose ``input_hash`` (settings + every
per-movie input hash) matches the meta does nothing; otherwise rows whose per-movie hash is
unchanged under the same settings are copied and only the others are encoded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mmlens import __version__, artifacts
from mmlens.artifacts import MODALITIES
from mmlens.config import Config

COPY_BLOCK_ROWS = 4096
MAX_RECORDED_FAILURES = 50
INDEX_COLUMNS = ("row", "movieId", "status", "error", "input_sha256", "input_stat")


@dataclass
class Batch:
    """Encoded catalog rows: ``vectors[i]`` is ``rows[i]``; ``errors[i]`` set means it failed."""

    rows: np.ndarray
    vectors: np.ndarray
    errors: list[str | None]


class Encoder(Protocol):
    """What a stage hands to :func:`build_table`: a loaded model bound to the catalog's inputs."""

    dim: int
    info: dict[str, Any]

    def encode(self, rows: np.ndarray) -> Iterator[Batch]:
        """Encode the given catalog rows, streamed batch by batch."""
        ...


@dataclass(frozen=True)
class TablePaths:
    """Where one table (final or a shard) lives."""

    embeddings: Path
    index: Path
    meta: Path


def final_paths(cfg: Config, modality: str) -> TablePaths:
    return TablePaths(
        artifacts.path(cfg, "embeddings", modality=modality),
        artifacts.path(cfg, "embedding_index", modality=modality),
        artifacts.path(cfg, "embedding_meta", modality=modality),
    )


def shard_name(shard: tuple[int, int]) -> str:
    return f"{shard[0]}of{shard[1]}"


def shard_paths(cfg: Config, modality: str, shard: tuple[int, int]) -> TablePaths:
    root = artifacts.path(cfg, "embedding_shard", modality=modality, shard=shard_name(shard))
    return TablePaths(root / "embeddings.npy", root / "index.parquet", root / "meta.json")


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate ``(i, n)`` with ``0 <= i < n``; also accepts the CLI's ``"i/n"`` string."""
    if shard is None:
        return None
    if isinstance(shard, str):
        left, sep, right = shard.partition("/")
        if not sep:
            raise ValueError(f"shard must be 'i/n' or (i, n), got {shard!r}")
        shard = (int(left), int(right))
    i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must satisfy 0 <= i < n, got {shard!r}")
    return i, n


def shard_rows(n_rows: int, shard: tuple[int, int] | None) -> np.ndarray:
    """The catalog rows of one shard: a contiguous slice, disjoint from the other shards."""
    if shard is None:
        return np.arange(n_rows, dtype=np.int64)
    i, n = shard
    return np.arange(i * n_rows // n, (i + 1) * n_rows // n, dtype=np.int64)


# ---------------------------------------------------------------------------------------- hashing


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: Sequence[Path]) -> str:
    """The sha256 of one file; over several (e.g. sharded weights) one hash of names + hashes."""
    if len(paths) == 1:
        return sha256_file(Path(paths[0]))
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_json(data: Any) -> str:
    return sha256_bytes(json.dumps(data, sort_keys=True, default=str).encode())


def input_hash(settings: dict[str, Any], movie_ids: np.ndarray,
               item_hashes: Sequence[str | None]) -> str:
    """Hash of the settings and of every (movieId, per-movie input hash) pair, in catalog order."""
    h = hashlib.sha256(sha256_json(settings).encode())
    for movie_id, item in zip(movie_ids.tolist(), item_hashes, strict=True):
        h.update(f"{movie_id}:{item or '-'}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- reading


def read_catalog(cfg: Config) -> np.ndarray:
    """movieId of every catalog row, in ``movies.parquet`` order (checked unique)."""
    movies = pd.read_parquet(artifacts.require(cfg, "movies"), columns=["movieId"])
    ids = movies["movieId"].to_numpy(dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("movies.parquet has duplicate movieId values: re-run notebook 01")
    return ids


def read_table(paths: TablePaths) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]] | None:
    """A complete table (memory-mapped embeddings, index, meta), or None when absent or partial."""
    if not (paths.meta.exists() and paths.index.exists() and paths.embeddings.exists()):
        return None
    meta = artifacts.read_json(paths.meta)
    index = pd.read_parquet(paths.index)
    emb = np.load(paths.embeddings, mmap_mode="r")
    if emb.ndim != 2 or len(emb) != len(index) or len(index) != meta.get("n_rows"):
        return None
    return emb, index, meta


def load_embeddings(cfg: Config, modality: str) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """The final table of ``modality`` for notebooks: (embeddings, index, meta)."""
    check_modality(modality)
    for name in ("embeddings", "embedding_index", "embedding_meta"):
        artifacts.require(cfg, name, modality=modality)
    table = read_table(final_paths(cfg, modality))
    if table is None:
        raise ValueError(f"the {modality} embedding files disagree: re-run its notebook")
    return table


def previous_inputs(cfg: Config, modality: str) -> dict[int, tuple[str, str]]:
    """movieId -> (input_stat, input_sha256) from the last complete table (to skip re-hashing)."""
    table = read_table(final_paths(cfg, modality))
    if table is None:
        return {}
    index = table[1].dropna(subset=["input_stat", "input_sha256"])
    return {int(m): (s, h) for m, s, h in
            zip(index["movieId"], index["input_stat"], index["input_sha256"], strict=True)}


# ---------------------------------------------------------------------------------------- writing


@dataclass
class _Plan:
    compute: np.ndarray  # positions (within the slice) to encode
    # (positions, source rows, source embeddings, source index) per earlier table
    reuse: list[tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]]
    dim: int | None


def _plan(rows: np.ndarray, movie_ids: np.ndarray, item_hashes: Sequence[str | None],
          settings_hash: str, sources: list[TablePaths]) -> _Plan:
    """Decide per row: missing (no input), reused from an earlier table, or to be encoded."""
    todo = np.array([item_hashes[r] is not None for r in rows], dtype=bool)
    reuse: list[tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]] = []
    dim: int | None = None
    for paths in sources:
        table = read_table(paths)
        if table is None or table[2].get("settings_hash") != settings_hash:
            continue
        emb, index, meta = table
        dim = int(meta["dim"])
        src = pd.Series(np.arange(len(index)), index=index["movieId"].to_numpy(np.int64))
        wanted = np.flatnonzero(todo)
        ids = movie_ids[rows[wanted]]
        hit = np.isin(ids, src.index.to_numpy())
        wanted, ids = wanted[hit], ids[hit]
        src_rows = src.loc[ids].to_numpy()
        same = index["input_sha256"].to_numpy(object)[src_rows] == np.array(
            [item_hashes[r] for r in rows[wanted]], dtype=object)
        if same.any():
            reuse.append((wanted[same], src_rows[same], emb, index))
            todo[wanted[same]] = False
    return _Plan(np.flatnonzero(todo), reuse, dim)


def build_table(cfg: Config, modality: str, *, movie_ids: np.ndarray,
                item_hashes: Sequence[str | None], settings: dict[str, Any],
                open_encoder: Callable[[], Encoder], shard: tuple[int, int] | None = None,
                item_stats: Sequence[str | None] | None = None,
                extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (or leave up to date) the table of ``modality`` for the catalog ``movie_ids``.

    ``item_hashes[r]`` is the content hash of row r's input, None when it has no input (zero row,
    ``has_<modality>`` False). ``settings`` (JSON-able: model, weights hash, preprocessing,
    pooling) decides whether earlier rows may be reused. ``open_encoder`` is called only when some
    row must be encoded. With ``shard=(i, n)`` only that slice is written, to a shard directory.
    """
    check_modality(modality)
    shard = check_shard(shard)
    start = time.perf_counter()
    n_catalog = len(movie_ids)
    settings_hash = sha256_json(settings)
    full_hash = input_hash(settings, movie_ids, item_hashes)
    target = final_paths(cfg, modality) if shard is None else shard_paths(cfg, modality, shard)
    rows = shard_rows(n_catalog, shard)
    label = modality if shard is None else f"{modality} shard {shard_name(shard)}"

    current = read_table(target)
    if current is not None and current[2].get("input_hash") == full_hash:
        meta = current[2]
        print(f"{label} embeddings, {_model_words(meta)}: up to date, nothing to compute; "
              f"{meta['n_present']}/{meta['n_rows']} movies have one, dim {meta['dim']}")
        return _summary(meta, target, status="up to date", n_computed=0, n_reused=len(rows))

    sources = [target] + ([final_paths(cfg, modality)] if shard is not None else [])
    plan = _plan(rows, movie_ids, item_hashes, settings_hash, sources)
    encoder = open_encoder() if len(plan.compute) or plan.dim is None else None
    dim = encoder.dim if encoder is not None else plan.dim
    assert dim is not None

    n = len(rows)
    status = np.where([item_hashes[r] is None for r in rows], "missing", "ok").astype(object)
    errors = np.full(n, None, dtype=object)
    target.meta.unlink(missing_ok=True)  # the commit marker goes first, comes back last
    with artifacts.atomic_path(target.embeddings) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for pos, src_rows, emb, index in plan.reuse:
            for lo in range(0, len(pos), COPY_BLOCK_ROWS):
                sl = slice(lo, lo + COPY_BLOCK_ROWS)
                out[pos[sl]] = emb[src_rows[sl]]
            status[pos] = index["status"].to_numpy(object)[src_rows]
            errors[pos] = index["error"].to_numpy(object)[src_rows]
        encode_start = time.perf_counter()
        if len(plan.compute):
            assert encoder is not None
            errors_seen = _encode_into(out, rows, plan.compute, encoder, label)
            for p, err in errors_seen.items():
                status[p], errors[p] = "failed", err
        out.flush()
        del out
    encode_seconds = time.perf_counter() - encode_start

    present = status == "ok"
    index = pd.DataFrame({
        "row": rows.astype(np.int64),
        "movieId": movie_ids[rows].astype(np.int32),
        f"has_{modality}": present,
        "status": status.astype(str),
        "error": pd.Series(errors, dtype=object),
        "input_sha256": pd.Series([item_hashes[r] for r in rows], dtype=object),
        "input_stat": pd.Series([item_stats[r] if item_stats else None for r in rows],
                                dtype=object),
    })
    artifacts.write_parquet(index, target.index)
    failures = {str(m): e for m, e in zip(index["movieId"], errors, strict=True) if e is not None}
    meta = {
        **settings,
        **(encoder.info if encoder is not None else {}),
        **(extra_meta or {}),
        "modality": modality,
        "dim": int(dim),
        "dtype": "float32",
        "settings_hash": settings_hash,
        "input_hash": full_hash,
        "n_rows": n,
        "n_catalog": n_catalog,
        "n_present": int(present.sum()),
        "n_missing": int((status == "missing").sum()),
        "n_failed": len(failures),
        "failures": dict(list(failures.items())[:MAX_RECORDED_FAILURES]),
        "missing_rows": "zeros, has_" + modality + " False",
        "shard": list(shard) if shard else None,
        "row_range": [int(rows[0]), int(rows[-1]) + 1] if n else [0, 0],
        "mmlens_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 2),
    }
    artifacts.write_json(target.meta, meta)
    n_reused = sum(len(r[0]) for r in plan.reuse)
    n_new = len(plan.compute)
    print(f"{label} embeddings, {_model_words(meta)}: {n_new} vectors computed in "
          f"{encode_seconds:.1f} s ({n_new / max(encode_seconds, 1e-9):.1f}/s), {n_reused} reused; "
          f"{meta['n_present']}/{n} movies have one, {meta['n_failed']} failed; dim {dim}")
    return _summary(meta, target, status="computed", n_computed=len(plan.compute),
                    n_reused=n_reused)


def _encode_into(out: np.ndarray, rows: np.ndarray, compute: np.ndarray, encoder: Encoder,
                 label: str) -> dict[int, str]:
    """Stream the encoder's batches into ``out``; returns position -> error for failed rows."""
    position = {int(r): int(p) for p, r in zip(compute, rows[compute], strict=True)}
    failed: dict[int, str] = {}
    with tqdm(total=len(compute), desc=f"embed {label}", unit="movie") as bar:
        for batch in encoder.encode(rows[compute]):
            pos = np.array([position[int(r)] for r in batch.rows], dtype=np.int64)
            vectors = np.asarray(batch.vectors, dtype=np.float32)
            for i, err in enumerate(batch.errors):
                if err is not None:
                    failed[int(pos[i])] = err
                    vectors[i] = 0.0
            if not np.isfinite(vectors).all():
                raise FloatingPointError(f"{label}: the encoder produced NaN or inf values")
            out[pos] = vectors
            bar.update(len(pos))
    return failed


def _model_words(meta: dict[str, Any]) -> str:
    """``"<model label>, <precision> on <device>"`` for the summary line."""
    where = f" on {meta['device']}" if meta.get("device") else ""
    return f"{meta.get('model_id', '?')}, {meta.get('precision', '?')}{where}"


def _summary(meta: dict[str, Any], paths: TablePaths, *, status: str, n_computed: int,
             n_reused: int) -> dict[str, Any]:
    keys = ("modality", "model_id", "weights", "dim", "n_rows", "n_present", "n_missing",
            "n_failed", "input_hash")
    return {**{k: meta.get(k) for k in keys}, "status": status, "n_computed": n_computed,
            "n_reused": n_reused, "embeddings": str(paths.embeddings), "index": str(paths.index),
            "meta": str(paths.meta)}


# ----------------------------------------------------------------------------------------- shards


def merge_shards(cfg: Config, modality: str) -> dict[str, Any]:
    """Join the shard tables of ``modality`` into the final table (equal to a single run)."""
    check_modality(modality)
    root = artifacts.path(cfg, "embedding_shard", modality=modality, shard="x").parent
    metas = sorted(root.glob(f"{modality}-*of*/meta.json"))
    if not metas:
        raise artifacts.MissingArtifactError(
            f"no {modality} shards under {root}: run the stage with shard=(i, n) first")
    tables = {}
    for meta_path in metas:
        table = read_table(TablePaths(meta_path.parent / "embeddings.npy",
                                      meta_path.parent / "index.parquet", meta_path))
        if table is not None:
            tables[tuple(table[2]["shard"])] = table
    counts = {n for _, n in tables}
    catalog = read_catalog(cfg)
    for n in sorted(counts, reverse=True):
        group = [tables.get((i, n)) for i in range(n)]
        if any(t is None for t in group):
            continue
        hashes = {t[2]["input_hash"] for t in group if t is not None}
        if len(hashes) == 1 and group[0] is not None and group[0][2]["n_catalog"] == len(catalog):
            return _write_merged(cfg, modality, [t for t in group if t is not None])
    have = sorted(f"{i}/{n}" for i, n in tables)
    raise ValueError(f"the {modality} shards under {root} do not form one complete, consistent "
                     f"run of the current catalog (found {have}): re-run the missing shards")


def _write_merged(cfg: Config, modality: str,
                  group: list[tuple[np.ndarray, pd.DataFrame, dict[str, Any]]]) -> dict[str, Any]:
    target = final_paths(cfg, modality)
    first = group[0][2]
    current = read_table(target)
    if current is not None and current[2].get("input_hash") == first["input_hash"]:
        print(f"{modality} embeddings up to date: {target.embeddings}")
        return _summary(current[2], target, status="up to date", n_computed=0,
                        n_reused=current[2]["n_rows"])
    n, dim = first["n_catalog"], first["dim"]
    target.meta.unlink(missing_ok=True)
    with artifacts.atomic_path(target.embeddings) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for emb, index, _ in group:
            rows = index["row"].to_numpy()
            if len(rows):
                out[rows[0]:rows[-1] + 1] = emb
        out.flush()
        del out
    index = pd.concat([t[1] for t in group], ignore_index=True)
    if not np.array_equal(index["row"].to_numpy(), np.arange(n)):
        raise ValueError(f"the {modality} shards do not cover rows 0..{n - 1} exactly once")
    artifacts.write_parquet(index, target.index)
    failures: dict[str, str] = {}
    for t in group:
        failures.update(t[2]["failures"])
    meta = {**first,
            "n_rows": n, "shard": None, "row_range": [0, n],
            "n_present": int(index[f"has_{modality}"].sum()),
            "n_missing": int((index["status"] == "missing").sum()),
            "n_failed": int((index["status"] == "failed").sum()),
            "failures": dict(list(failures.items())[:MAX_RECORDED_FAILURES]),
            "merged_from": len(group),
            "seconds": round(sum(t[2]["seconds"] for t in group), 2),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    artifacts.write_json(target.meta, meta)
    print(f"{modality} embeddings merged from {len(group)} shards: {meta['n_present']}/{n} present")
    return _summary(meta, target, status="merged", n_computed=0, n_reused=n)
