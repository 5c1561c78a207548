"""Top-k recommendations over the whole catalog, cold movies included.

Raw MovieLens ids and Categorify codes are mapped through the saved workflow's
``categories/unique.<column>.parquet`` files (read, never assumed). Item features (genres, year,
modality flags) come from the ETL parts; a catalog movie that no part mentions still gets scored
from its pretrained content, with padded genres and the null year code.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts
from mmlens.config import Config
from mmlens.train import data
from mmlens.train.data import ITEM_SLOT, USER_SLOT
from mmlens.train.evaluate import ScoreFn

NVT_RESERVED = {"pad": 0, "null": 1, "oov": 2}  # NVTabular 23.8 Categorify, when schema lacks it


def reserved_code(schema: dict[str, Any], kind: str) -> int:
    """Categorify's reserved code of ``kind`` (pad, null, oov) from the schema, else 23.8's."""
    return int(schema.get("reserved_codes", {}).get(kind, NVT_RESERVED[kind]))


def load_category_mapping(workflow_dir: Path, column: str) -> pd.DataFrame:
    """``DataFrame(raw, code)`` for one categorified column of a saved NVTabular workflow.

    The code of a value is the row label of ``unique.<column>.parquet`` (NVTabular 23.8 stores it
    as the index; reserved codes have no raw value and are dropped).
    """
    path = Path(workflow_dir) / "categories" / f"unique.{column}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the workflow of notebook 06 is incomplete")
    df = pd.read_parquet(path)
    if column not in df.columns:
        raise ValueError(f"{path} has no column {column!r} (has {list(df.columns)})")
    out = pd.DataFrame({"raw": df[column].to_numpy(), "code": np.asarray(df.index, np.int64)})
    out = out[out["raw"].notna()].reset_index(drop=True)
    out["raw"] = out["raw"].astype(np.int64)
    return out


def catalog_items(etl_dir: Path, schema: dict[str, Any]) -> pd.DataFrame:
    """One row per catalog movie code with the features a model reads for it.

    Columns: ``movieId`` (code), ``raw_movieId``, one column per non-user slot (``genres`` holds
    padded code arrays), ``has_<m>`` flags, ``in_train`` (False = cold for this split).
    """
    etl_dir = Path(etl_dir)
    mapping = load_category_mapping(etl_dir / "workflow", ITEM_SLOT)
    slots = {s["name"]: s for s in schema["slots"] if s["name"] != USER_SLOT}
    item_col = slots[ITEM_SLOT]["column"]
    flags = {info["has_column"]: m for m, info in schema["pretrained"].items()}
    cols = sorted({s["column"] for s in slots.values()} | set(flags))
    seen = pd.concat(
        [data.read_frame(data.part_dir(etl_dir, schema, p), cols) for p in schema["parts"]],
        ignore_index=True,
    ).drop_duplicates(item_col).set_index(item_col)
    train_items = set(data.read_frame(data.part_dir(etl_dir, schema, "train"), [item_col])
                      [item_col].tolist())
    codes = mapping["code"].to_numpy()
    items = pd.DataFrame({ITEM_SLOT: codes, "raw_movieId": mapping["raw"].to_numpy()})
    known = seen.reindex(codes)
    tables = data.load_tables(etl_dir, schema)
    for name, slot in slots.items():
        if name == ITEM_SLOT or name in {i["slot"] for i in schema["pretrained"].values()}:
            continue
        hot = int(slot["hotness"])
        values = known[slot["column"]].tolist()
        if hot > 1:
            items[name] = list(data.pad_lists([v if isinstance(v, (list, np.ndarray)) else []
                                               for v in values], hot))
        else:
            null = reserved_code(schema, "null")
            items[name] = pd.Series(values).fillna(null).astype(np.int64).to_numpy()
    for flag, m in flags.items():
        from_table = (np.abs(tables[m][codes]).sum(axis=1) > 0).astype(np.float32)
        items[flag] = known[flag].fillna(pd.Series(from_table, index=codes)).to_numpy(np.float32)
    items["in_train"] = np.isin(codes, list(train_items))
    return items


def pair_features(schema: dict[str, Any], items: pd.DataFrame, users: np.ndarray,
                  item_codes: np.ndarray) -> data.Features:
    """Model inputs for ``(user code, item code)`` pairs, using ``items`` for item features."""
    lookup = pd.Series(np.arange(len(items)), index=items[ITEM_SLOT].to_numpy())
    rows = lookup.reindex(np.asarray(item_codes)).to_numpy()
    if np.isnan(rows).any():
        raise ValueError("some item codes are not in the catalog")
    rows = rows.astype(np.int64)
    feats: data.Features = {USER_SLOT: np.asarray(users, np.int64),
                            ITEM_SLOT: np.asarray(item_codes, np.int64)}
    pretrained_slots = {i["slot"]: m for m, i in schema["pretrained"].items()}
    for slot in schema["slots"]:
        name = slot["name"]
        if name in feats:
            continue
        if name in pretrained_slots:
            feats[name] = feats[ITEM_SLOT]
        elif int(slot["hotness"]) > 1:
            feats[name] = np.stack(items[name].to_numpy()[rows]).astype(np.int64)
        else:
            feats[name] = items[name].to_numpy(np.int64)[rows]
    for info in schema["pretrained"].values():
        feats[info["has_column"]] = items[info["has_column"]].to_numpy(np.float32)[rows]
    return feats


def model_score_fn(model: Any, schema: dict[str, Any], items: pd.DataFrame,
                   batch_size: int = 8192) -> ScoreFn:
    """A ``(users, items) -> scores`` function over a Keras model."""
    from mmlens.train import models

    def score(users: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
        return models.predict_features(model, pair_features(schema, items, users, item_codes),
                                       batch_size=batch_size)

    return score


def recommend(
    model: Any,
    schema: dict[str, Any],
    user_id: int,
    k: int = 10,
    *,
    items: pd.DataFrame,
    workflow_dir: Path,
    exclude: Iterable[int] | None = None,
) -> pd.DataFrame:
    """The ``k`` best catalog movies for raw ``user_id``, scoring EVERY catalog movie.

    ``items`` comes from :func:`catalog_items`; ``exclude`` lists raw movieIds to leave out
    (e.g. the user's train ratings, see :func:`rated_movies`). Returns ``rank, movieId (raw),
    code, score, cold``.
    """
    users = load_category_mapping(workflow_dir, USER_SLOT)
    match = users.loc[users["raw"] == int(user_id), "code"]
    code = int(match.iloc[0]) if len(match) else reserved_code(schema, "oov")
    if not len(match):
        print(f"user {user_id} is not in the workflow's vocabulary: scoring as unknown user")
    codes = items[ITEM_SLOT].to_numpy(np.int64)
    scores = model_score_fn(model, schema, items)(np.full(len(codes), code), codes)
    out = pd.DataFrame({"movieId": items["raw_movieId"].to_numpy(), "code": codes,
                        "score": scores, "cold": ~items["in_train"].to_numpy()})
    if exclude is not None:
        out = out[~out["movieId"].isin(list(exclude))]
    out = out.sort_values(["score", "code"], ascending=[False, True]).head(k)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)


def rated_movies(etl_dir: Path, schema: dict[str, Any], user_id: int, part: str = "train") -> list:
    """Raw movieIds that raw ``user_id`` rated in one ETL part."""
    etl_dir = Path(etl_dir)
    users = load_category_mapping(etl_dir / "workflow", USER_SLOT)
    movies = load_category_mapping(etl_dir / "workflow", ITEM_SLOT)
    code = users.loc[users["raw"] == int(user_id), "code"]
    if code.empty:
        return []
    df = data.read_frame(data.part_dir(etl_dir, schema, part), [USER_SLOT, ITEM_SLOT])
    rated = df.loc[df[USER_SLOT] == int(code.iloc[0]), ITEM_SLOT]
    return movies.set_index("code").reindex(rated.unique())["raw"].dropna().astype(int).tolist()


def recommend_for(cfg: Config, user_id: int, k: int = 10, *, split: str = "random",
                  variant: str = "mlp", exclude_rated: bool = True) -> pd.DataFrame:
    """Top-``k`` movies for raw ``user_id`` from the model notebook 08 saved, with titles.

    Scores every catalog movie (cold ones included); ``exclude_rated`` drops the user's train
    ratings.
    """
    from mmlens.train import models

    etl_dir, schema = data.require_split(cfg, split)
    model_dir = artifacts.require(cfg, "keras_dir", split=split, variant=variant)
    model = models.load_model(model_dir / models.MODEL_FILE)
    items = catalog_items(etl_dir, schema)
    exclude = rated_movies(etl_dir, schema, user_id) if exclude_rated else None
    out = recommend(model, schema, user_id, k, items=items, workflow_dir=etl_dir / "workflow",
                    exclude=exclude)
    movies = artifacts.path(cfg, "movies")
    if movies.exists():
        titles = pd.read_parquet(movies, columns=["movieId", "title"])
        out = out.merge(titles, on="movieId", how="left")
    return out
