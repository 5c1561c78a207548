"""The artifact contract: every file a stage writes or reads, and which notebook makes it.

All paths are relative to ``Config.dataset_dir`` (``DATA_DIR/<dataset>``). A stage reads only
artifacts listed here and calls :func:`require` first, so a missing input fails with a message that
names the notebook to run. Writers use :func:`atomic_path` so that a half-written file is never
taken for complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlens.config import Config
from mmlens.errors import UserError

NOTEBOOKS = {
    "00": "00-Intro.ipynb",
    "01": "01-Download-Convert.ipynb",
    "02": "02-Data-Enrichment.ipynb",
    "03": "03-Feature-Extraction-Poster.ipynb",
    "04": "04-Feature-Extraction-Text.ipynb",
    "05": "05-Create-Feature-Store.ipynb",
    "06": "06-ETL-with-NVTabular.ipynb",
    "07": "07-Training-with-HugeCTR.ipynb",
    "08": "08-Training-with-TensorFlow.ipynb",
    "09": "09-Do-Pretrained-Embeddings-Help.ipynb",
    "10": "10-Real-Data-Protocol.ipynb",
}

SPLITS = ("random", "temporal", "cold-items")
MODALITIES = ("poster", "text")
#: the stage that extracts each modality's features (the 03/04 artifacts below say "03")
EXTRACTION_STAGES = {"poster": "03", "text": "04"}


class MissingArtifactError(UserError, FileNotFoundError):
    """An input of a stage does not exist: an earlier notebook has not run (or failed)."""


@dataclass(frozen=True)
class Artifact:
    """One file or directory written by one stage."""

    name: str
    relpath: str
    stage: str
    description: str

    def path(self, cfg: Config, **fmt: str) -> Path:
        """Absolute path; ``fmt`` fills placeholders such as ``{split}`` or ``{modality}``."""
        return cfg.dataset_dir / self.relpath.format(**fmt)

    def stage_for(self, **fmt: str) -> str:
        """The stage that writes this artifact for ``fmt``: a 03/04 feature artifact is written
        by its modality's stage (text: 04)."""
        if self.stage == EXTRACTION_STAGES["poster"] and "modality" in fmt:
            return EXTRACTION_STAGES.get(fmt["modality"], self.stage)
        return self.stage

    def notebook(self, **fmt: str) -> str:
        """The notebook of :meth:`stage_for`."""
        return NOTEBOOKS[self.stage_for(**fmt)]


_ARTIFACTS = [
    # 01 download and convert
    Artifact("raw_dir", "raw", "01", "the release zip, its .md5 and the extracted CSV/DAT files"),
    Artifact(
        "movies",
        "movies.parquet",
        "01",
        "movieId int32, title, year Int, genres list<str>, imdbId 7-digit str, tmdbId Int",
    ),
    Artifact(
        "ratings",
        "ratings.parquet",
        "01",
        "userId int32, movieId int32, rating float32, timestamp int64",
    ),
    Artifact("tags", "tags.parquet", "01", "userId int32, movieId int32, tag str, timestamp int64"),
    Artifact(
        "convert_report", "convert_report.json", "01", "rows read, kept and dropped with reasons"
    ),
    # 02 enrichment
    Artifact("posters_dir", "enrich/posters", "02", "one RGB JPEG per movie: <movieId>.jpg"),
    Artifact(
        "synopses", "enrich/synopses.parquet", "02", "movieId int32, synopsis str, source str"
    ),
    Artifact(
        "enrich_manifest",
        "enrich/manifest.parquet",
        "02",
        "one row per catalog movie: status/source/http_status/error/bytes/sha256/fetched_at "
        "per modality (poster_*, synopsis_*)",
    ),
    Artifact("enrich_cache", "enrich/cache", "02", "raw responses keyed by provider and id"),
    # 03/04 feature extraction ({modality} is poster or text)
    Artifact(
        "embeddings",
        "features/{modality}_embeddings.npy",
        "03",
        "float32 [n_catalog, dim], one row per catalog movie in movies.parquet order",
    ),
    Artifact(
        "embedding_index",
        "features/{modality}_index.parquet",
        "03",
        "row int64, movieId int32, has_{modality} bool",
    ),
    Artifact(
        "embedding_meta",
        "features/{modality}_meta.json",
        "03",
        "model id, weights hash or 'random', dim, preprocessing, pooling, input hash",
    ),
    Artifact(
        "embedding_shard",
        "features/shards/{modality}-{shard}",
        "03",
        "one slice of a sharded 03/04 run (embeddings.npy, index.parquet, meta.json)",
    ),
    Artifact(
        "embeddings_pca",
        "features/{modality}_pca{dim}",
        "03",
        "optional PCA of the embeddings: embeddings.npy, components.npy, mean.npy, meta.json",
    ),
    # 05 feature store
    Artifact(
        "items",
        "store/items.parquet",
        "05",
        "movieId, year, genres, has_poster, has_text, n_ratings (train only)",
    ),
    Artifact(
        "pretrained",
        "store/pretrained_{modality}.npy",
        "05",
        "float32 [n_items, dim] aligned to items.parquet rows, missing rows per policy",
    ),
    Artifact(
        "pretrained_meta",
        "store/pretrained_{modality}.json",
        "05",
        "missing-row policy and counts, PCA explained variance, the 03/04 metadata",
    ),
    Artifact(
        "split",
        "store/splits/{split}",
        "05",
        "train/valid/test parquet (userId, movieId, rating, timestamp, label) + split.json",
    ),
    # 06 NVTabular ETL
    Artifact("workflow", "etl/{split}/workflow", "06", "the fitted NVTabular workflow"),
    Artifact(
        "etl_output",
        "etl/{split}/{part}",
        "06",
        "parquet with _file_list.txt and _metadata.json; part is train, valid or test",
    ),
    Artifact(
        "etl_pretrained",
        "etl/{split}/pretrained_{modality}.npy",
        "06",
        "pretrained table re-ordered to Categorify's movieId codes, reserved rows zero",
    ),
    Artifact(
        "sparse_model",
        "etl/{split}/hugectr/{modality}_sparse",
        "06",
        "HugeCTR sparse-model dir: key (int64, slot offsets applied), emb_vector (float32)",
    ),
    Artifact(
        "etl_schema",
        "etl/{split}/schema.json",
        "06",
        "slot columns, slot_size_array, offsets, dense and label columns: what 07 reads",
    ),
    # 07-09 training and evaluation
    Artifact("hugectr_dir", "models/hugectr/{split}", "07", "generated HugeCTR script, snapshots"),
    Artifact("keras_dir", "models/keras/{split}/{variant}", "08", "saved Keras model + history"),
    Artifact("metrics", "metrics/{stage}.json", "07", "metrics json written by stages 07, 08, 09"),
    Artifact("figures", "figures", "09", "PNG figures"),
    Artifact(
        "ablation_table",
        "metrics/09-ablation.csv",
        "09",
        "one row per split, variant and seed: AUC and logloss of the ablation",
    ),
]

ARTIFACTS: dict[str, Artifact] = {a.name: a for a in _ARTIFACTS}


def by_stage() -> dict[str, list[str]]:
    """The contract as ``{stage: [relpath, ...]}`` in stage order; the 03/04 feature artifacts
    (one per modality) are listed under ``03/04``."""
    grouped: dict[str, list[str]] = {}
    for art in ARTIFACTS.values():
        stages = "/".join(sorted({art.stage_for(modality=m) for m in MODALITIES}))
        grouped.setdefault(stages, []).append(art.relpath)
    return dict(sorted(grouped.items()))


def path(cfg: Config, name: str, **fmt: str) -> Path:
    """Path of the artifact ``name`` (see ``ARTIFACTS``)."""
    return ARTIFACTS[name].path(cfg, **fmt)


def require(cfg: Config, name: str, **fmt: str) -> Path:
    """Path of an input artifact, or a clear error naming the notebook that writes it."""
    art = ARTIFACTS[name]
    p = art.path(cfg, **fmt)
    if not p.exists():
        raise MissingArtifactError(
            f"{p} is missing ({art.description}). It is written by notebook "
            f"{art.notebook(**fmt)} (`python -m mmlens {art.stage_for(**fmt)}`): run that first "
            f"for dataset {cfg.dataset!r}."
        )
    return p


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``target`` only if the block succeeds.

    Works for files and directories. The temporary name starts with ``.tmp-`` so that readers and
    resumable steps can ignore leftovers of a killed run.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    inner = tmp / target.name
    try:
        yield inner
        if not inner.exists():
            raise FileNotFoundError(f"nothing was written to {inner}")
        if target.is_dir() and not target.is_symlink():
            _rmtree(target)
        os.replace(inner, target)
    finally:
        _rmtree(tmp)


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def write_json(target: Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, 2-space indent)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(p: Path) -> Any:
    return json.loads(Path(p).read_text())


def write_parquet(df: Any, target: Path) -> None:
    """Write a pandas DataFrame to parquet atomically, without the index."""
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)
