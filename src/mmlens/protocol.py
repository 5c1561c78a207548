"""The fixed ml-latest-small evaluation protocol (``datasets/ml-latest-small-protocol``).

Label ``rating > 3``, metric ROC-AUC (and logloss) over the test rows. Warm: the test rows are the
``(userId, movieId)`` pairs of ``warm_test_pairs.csv``, every other rating is train. Cold: every
rating of the movies in ``cold_movies.csv`` is test, all others train. mmlens carves its
validation part from train only: warm, a seeded share of the train rows; cold, every rating of a
seeded share of the train movies (a cold validation set, so early stopping is cold too).

The two splits are written as the feature store's ``random`` (warm) and ``cold-items`` (cold)
splits, so stage 06 and the stage 08/09 training code run on them unchanged. The release and the
protocol files ship in the repository's ``datasets/`` folder (:data:`DATASETS_DIR`); notebook 10 and
``bench/bench_09_protocol.py`` run them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlens import artifacts, feature_store, splits
from mmlens.config import Config
from mmlens.errors import UserError

RELEASE_DIR = "ml-latest-small"
PROTOCOL_DIR = "ml-latest-small-protocol"
DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"
LABEL_THRESHOLD = 3.0
VALID_SHARE = 0.1
# what a truly new movie has; with the user tags the protocol's baselines were measured with; and
# a control that says nothing beyond the genres, synopsis-shaped (features.text.generated_synopses)
TEXT_SOURCES = ("title+genres", "title+genres+tags", "generated-synopsis")
TEXT_SOURCE = "title+genres+tags"
SYNOPSIS = "synopsis"  # real synopses from a user table (none ship here): prepare(synopses=...)
SPLIT_NAMES = {"warm": "random", "cold": "cold-items"}
SPLIT_SEED = 42  # draws the validation parts (never the test parts: those are the protocol's)
DEFAULT_SEEDS = 3
SEEDS_ENV = "MMLENS_PROTOCOL_SEEDS"
EPOCHS_ENV = "MMLENS_PROTOCOL_EPOCHS"
SOURCES_ENV = "MMLENS_PROTOCOL_SOURCES"  # comma-separated text sources


def datasets_dir(root: Path | None = None) -> Path:
    """The ``datasets`` folder holding the release and the protocol (default: the repository's);
    a clear error when either is missing."""
    root = Path(root or DATASETS_DIR)
    for needed in (root / RELEASE_DIR / "ratings.csv", root / PROTOCOL_DIR / "cold_movies.csv"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing: the real-data protocol runs from a "
                                    "checkout of the repository (its datasets/ folder)")
    return root


def source_config(work_dir: Path, text_source: str) -> Config:
    """The data directory of one text source's run under ``work_dir`` (dataset ml-latest-small)."""
    if text_source not in (*TEXT_SOURCES, SYNOPSIS):
        raise ValueError(f"unknown text source {text_source!r}; choose from "
                         f"{(*TEXT_SOURCES, SYNOPSIS)}")
    return Config(data_dir=Path(work_dir) / text_source, dataset=RELEASE_DIR, seed=SPLIT_SEED)


def seed_range(n: int | None = None) -> tuple[int, ...]:
    """Seeds 1..n; ``n`` None reads ``MMLENS_PROTOCOL_SEEDS`` (default 3)."""
    n = int(os.environ.get(SEEDS_ENV, DEFAULT_SEEDS)) if n is None else int(n)
    if n < 1:
        raise ValueError(f"need at least one seed, got {n}")
    return tuple(range(1, n + 1))


def text_sources(sources: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The text sources to run: ``sources`` (names, or one comma-separated string), else
    ``MMLENS_PROTOCOL_SOURCES``, else all of :data:`TEXT_SOURCES`."""
    if sources is None:
        sources = os.environ.get(SOURCES_ENV) or TEXT_SOURCES
    names = sources.split(",") if isinstance(sources, str) else sources
    chosen = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in chosen if n not in (*TEXT_SOURCES, SYNOPSIS)]
    if unknown or not chosen:
        raise UserError(f"text sources must be among {(*TEXT_SOURCES, SYNOPSIS)}, "
                        f"got {sources!r}")
    return chosen


def epoch_cap(n: int | None = None) -> int | None:
    """The most epochs per model: ``n``, else ``MMLENS_PROTOCOL_EPOCHS``, else None (the
    protocol's own setting)."""
    value = os.environ.get(EPOCHS_ENV) if n is None else n
    return None if value in (None, "") else int(value)


def baselines(protocol_dir: Path) -> pd.DataFrame:
    """The table of the protocol's README: established libraries measured on exactly this
    protocol (model, features, warm and cold AUC)."""
    rows = [[cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
            for line in (Path(protocol_dir) / "README.md").read_text().splitlines()
            if line.startswith("|")]
    header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
    table = pd.DataFrame(body, columns=[h.replace(" AUC", "") for h in header])
    return table.astype({"warm": float, "cold": float})


def convert_release(cfg: Config, release_dir: Path) -> dict[str, Any]:
    """Convert the extracted CSVs of ``release_dir`` into ``cfg``'s movies/ratings/tags."""
    from mmlens.movielens import convert

    names = ("movies.csv", "ratings.csv", "links.csv", "tags.csv")
    files = {n: Path(release_dir) / n for n in names if (Path(release_dir) / n).exists()}
    out = {name: artifacts.path(cfg, name) for name in ("movies", "ratings", "tags")}
    return convert.convert("csv", files, out)


def read_protocol(protocol_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The warm test pairs and the cold movie ids."""
    protocol_dir = Path(protocol_dir)
    pairs = pd.read_csv(protocol_dir / "warm_test_pairs.csv", dtype=np.int64)
    cold = pd.read_csv(protocol_dir / "cold_movies.csv", dtype=np.int64)["movieId"].to_numpy()
    if list(pairs.columns) != ["userId", "movieId"] or pairs.duplicated().any():
        raise ValueError(f"{protocol_dir}/warm_test_pairs.csv must hold unique userId,movieId")
    return pairs, np.sort(cold)


def warm_split(ratings: pd.DataFrame, test_pairs: pd.DataFrame, *, seed: int,
               valid_share: float = VALID_SHARE) -> splits.Split:
    """Test: the protocol's pairs; valid: a seeded ``valid_share`` of the remaining rows."""
    key = pd.MultiIndex.from_frame(ratings[["userId", "movieId"]].astype(np.int64))
    in_test = key.isin(pd.MultiIndex.from_frame(test_pairs))
    if in_test.sum() != len(test_pairs):
        raise ValueError(f"{len(test_pairs) - in_test.sum()} protocol test pairs have no rating")
    train_all = ratings[~in_test].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(len(train_all), bool)
    is_valid[rng.choice(len(train_all), round(valid_share * len(train_all)), replace=False)] = True
    definition = {"kind": "protocol-warm", "seed": seed, "valid_share": valid_share,
                  "text": f"test: the {len(test_pairs)} pairs of warm_test_pairs.csv; valid: "
                          f"{valid_share:.0%} of the other ratings drawn with seed {seed}"}
    return splits.Split("random", train_all[~is_valid].reset_index(drop=True),
                        train_all[is_valid].reset_index(drop=True),
                        ratings[in_test].reset_index(drop=True), definition)


def cold_split(ratings: pd.DataFrame, cold_movies: np.ndarray, *, seed: int,
               valid_share: float = VALID_SHARE) -> splits.Split:
    """Test: every rating of ``cold_movies``; valid: every rating of a seeded ``valid_share``
    of the other rated movies."""
    in_test = ratings["movieId"].isin(cold_movies).to_numpy()
    rest = np.sort(ratings.loc[~in_test, "movieId"].unique())
    rng = np.random.default_rng(seed)
    valid_movies = np.sort(rng.choice(rest, round(valid_share * len(rest)), replace=False))
    in_valid = ratings["movieId"].isin(valid_movies).to_numpy()
    test_movies = np.sort(ratings.loc[in_test, "movieId"].unique())
    definition = {"kind": "protocol-cold", "seed": seed, "valid_share": valid_share,
                  "text": f"test: all ratings of the {len(test_movies)} rated movies of "
                          f"cold_movies.csv; valid: all ratings of {len(valid_movies)} other "
                          f"movies ({valid_share:.0%}) drawn with seed {seed}",
                  "test_movies": [int(m) for m in test_movies],
                  "valid_movies": [int(m) for m in valid_movies]}
    parts = (ratings[~in_test & ~in_valid], ratings[in_valid], ratings[in_test])
    return splits.Split("cold-items", *(p.reset_index(drop=True) for p in parts), definition)


def write_store(cfg: Config, protocol_dir: Path, *, modalities: tuple[str, ...] = ("text",),
                valid_share: float = VALID_SHARE) -> dict[str, Any]:
    """Stage 05 on the protocol: items, pretrained tables (from 03/04 outputs) and both splits."""
    ratings = splits.add_label(pd.read_parquet(artifacts.require(cfg, "ratings")),
                               LABEL_THRESHOLD)
    pairs, cold = read_protocol(protocol_dir)
    cut = {"random": warm_split(ratings, pairs, seed=cfg.seed, valid_share=valid_share),
           "cold-items": cold_split(ratings, cold, seed=cfg.seed, valid_share=valid_share)}
    summary: dict[str, Any] = {
        name: feature_store.write_split(cfg, split, LABEL_THRESHOLD)
        for name, split in cut.items()}
    movies = pd.read_parquet(artifacts.require(cfg, "movies"))
    items = feature_store.build_items(movies, cut["random"].train)
    for m in modalities:
        paths = [artifacts.require(cfg, n, modality=m)
                 for n in ("embeddings", "embedding_index", "embedding_meta")]
        table, has, meta = feature_store.pretrained_table(movies["movieId"], m, *paths)
        items[f"has_{m}"] = has
        with artifacts.atomic_path(artifacts.path(cfg, "pretrained", modality=m)) as tmp:
            np.save(tmp, table)
        artifacts.write_json(artifacts.path(cfg, "pretrained_meta", modality=m), meta)
    artifacts.write_parquet(items, artifacts.path(cfg, "items"))
    return summary


def prepare(cfg: Config, datasets: Path, *, text_source: str = TEXT_SOURCE,
            synopses: Path | None = None, text_batch_size: int = 64) -> dict[str, Any]:
    """01 (convert), 04 (text embeddings of ``text_source`` with the packaged all-MiniLM-L6-v2),
    05 (protocol splits) and 06 (ETL) for ``cfg`` (dataset ``ml-latest-small``); returns the split
    sizes. ``text_source="synopsis"`` first runs 02 on ``synopses``, a user table (CSV or
    parquet with ``movieId`` and ``synopsis``)."""
    from mmlens import enrich, etl
    from mmlens.features import text

    convert_release(cfg, Path(datasets) / RELEASE_DIR)
    if text_source == SYNOPSIS:
        if synopses is None:
            raise UserError("the text source 'synopsis' needs synopses=<a CSV or parquet table "
                            "with columns movieId and synopsis>")
        enrich.run(cfg, providers=[enrich.TableProvider(synopses)], progress=False)
    # the protocol's encoder (its baselines used it), never the real-data default BERT
    text.run(cfg, model_id=text.MINILM_NAME, text_source=text_source, batch_size=text_batch_size)
    summary = write_store(cfg, Path(datasets) / PROTOCOL_DIR)
    etl.run(cfg, splits=tuple(SPLIT_NAMES.values()))
    return summary


ID_FEATURES = "ids + genres + year"
ID_ONLY = "id-only"


def candidate(variant: str, width: int | None = None) -> str:
    """The name of one model choice: ``id-only``, or the text at a table width
    (``text, 64 dims``; None: ``text, all dims``)."""
    if variant == ID_ONLY:
        return ID_ONLY
    return f"text, {'all' if width is None else int(width)} dims"


def _features(variant: str, text: str) -> str:
    if variant == "popularity":
        return "the movie's smoothed share of liked train ratings"
    return ID_FEATURES if variant == ID_ONLY else f"{ID_FEATURES} + text: {text}"


def _sources(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary.loc[summary["variant"] == "+text", "text"]))


def _candidates(summary: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows one text source chooses among: ID-only's (trained once, in the first source's
    directory, on the same rows) and its own +text rows, in run order."""
    return pd.concat([summary[summary["variant"] == ID_ONLY],
                      summary[(summary["variant"] == "+text") & (summary["text"] == source)]])


def chosen(summary: pd.DataFrame) -> pd.DataFrame:
    """Per text source and setting, the model chosen on validation among ID-only and +text at
    each width, in that order (notebook 09's ``choose_on_validation``): its row as the source's
    ``+text`` result, ``chosen`` naming it. ``summary``: ``run_protocol`` rows (``candidate``,
    ``text``)."""
    from mmlens.train.ablation import choose_on_validation

    rows = []
    for source in _sources(summary):
        part = _candidates(summary, source)
        options = list(dict.fromkeys(part["candidate"]))
        pick = choose_on_validation(part, {"+text": options}, by="candidate")
        rows.append(pick.assign(variant="+text", text=source))
    return pd.concat(rows, ignore_index=True)


def choice_steps(summary: pd.DataFrame) -> pd.DataFrame:
    """How :func:`chosen` got there: per text source and setting, one row per candidate after
    ID-only (notebook 09's ``choice_steps``): the choice so far, the candidate's lead in mean
    validation AUC, the seeds' ``spread``, the validation movies' ``movie_se`` and whether the
    lead beat both."""
    from mmlens.train.ablation import choice_steps as steps

    rows = []
    for source in _sources(summary):
        part = _candidates(summary, source)
        options = list(dict.fromkeys(part["candidate"]))
        for setting, rows_of in part.groupby("setting", sort=False):
            rows += [{"text": source, "setting": setting, **step}
                     for step in steps(rows_of.set_index("candidate"), options)]
    return pd.DataFrame(rows)


def comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """The protocol's result for a reader: ID-only, then per text source the model chosen on
    validation (:func:`chosen`; ``chosen`` says which, warm / cold), then popularity; one model
    (mean ± std over seeds) and the seed ensemble, warm and cold test AUC as text."""
    picks = chosen(summary)
    base = summary[summary["variant"].isin([ID_ONLY, "popularity"])].drop_duplicates(
        ["setting", "variant"])
    parts = [base[base["variant"] == ID_ONLY].assign(chosen=ID_ONLY), picks,
             base[base["variant"] == "popularity"].assign(chosen="")]
    s = pd.concat(parts, ignore_index=True)
    s["features"] = [_features(v, t) for v, t in zip(s["variant"], s["text"], strict=True)]
    n = int(s["n_seeds"].max())
    by = s.set_index(["features", "setting"])
    rows = []
    for features, variant in dict.fromkeys(zip(s["features"], s["variant"], strict=True)):
        cells = [by.loc[(features, setting)] for setting in SPLIT_NAMES]
        if variant == "popularity":
            rows.append(["popularity", features, *(f"{c['auc_mean']:.4f}" for c in cells), ""])
            continue
        which = " / ".join(str(c["chosen"]) for c in cells)
        rows.append([f"mmlens, one model ({n} seed{'s' * (n > 1)})", features,
                     *(f"{c['auc_mean']:.4f} ± {c['auc_std']:.4f}" for c in cells), which])
        if n > 1:
            rows.append([f"mmlens, {n}-seed ensemble", features,
                         *(f"{c['ens_auc']:.4f}" for c in cells), which])
    return pd.DataFrame(rows, columns=["model", "features", *SPLIT_NAMES,
                                       "chosen on validation (warm / cold)"])


def widths(summary: pd.DataFrame) -> pd.DataFrame:
    """AUC against the text table's width: per text source and setting, each candidate's mean
    validation AUC (what the choice reads) and mean test AUC (reported, never compared)."""
    parts = [_candidates(summary, source).assign(text=source) for source in _sources(summary)]
    both = pd.concat(parts, ignore_index=True).rename(
        columns={"val_auc_mean": "valid", "auc_mean": "test"})
    table = both.pivot_table(index=["text", "setting"], columns="candidate",
                             values=["valid", "test"], sort=False)
    return table.reindex(columns=["valid", "test"], level=0)


def lifts(summary: pd.DataFrame) -> pd.DataFrame:
    """What the text adds: per text source and setting, the model chosen on validation minus
    ID-only (mean test AUC over seeds, and the seed ensembles'), beside the larger of the two
    spreads over seeds; ``chosen`` says which model it was."""
    ids = summary[summary["variant"] == ID_ONLY].set_index("setting")
    text = chosen(summary)
    return pd.DataFrame({
        "text": text["text"].to_numpy(), "setting": text["setting"].to_numpy(),
        "chosen": text["chosen"].to_numpy(),
        "lift": text["auc_mean"].to_numpy() - ids.loc[text["setting"], "auc_mean"].to_numpy(),
        "spread": np.maximum(text["auc_std"].to_numpy(),
                             ids.loc[text["setting"], "auc_std"].to_numpy()),
        "ens_lift": text["ens_auc"].to_numpy() - ids.loc[text["setting"], "ens_auc"].to_numpy(),
    })


BASELINE_GAP_COLUMNS = ["setting", "best baseline", "baseline_auc", "chosen", "mmlens_auc", "gap",
                        "ens_auc", "ens_gap"]


def against_baselines(summary: pd.DataFrame, base: pd.DataFrame,
                      text_source: str = TEXT_SOURCE) -> pd.DataFrame:
    """Per setting: the best baseline of the protocol README (measured with ``text_source``),
    mmlens on that same text (the model chosen on validation: one model's mean, the seed
    ensemble) and the gaps; no rows where the run did not include ``text_source`` (e.g. real
    synopses alone: the baselines never saw them)."""
    text = chosen(summary)
    text = text[text["text"] == text_source]
    if text.empty:
        return pd.DataFrame(columns=BASELINE_GAP_COLUMNS)
    rows = []
    for setting in SPLIT_NAMES:
        best = base.loc[base[setting].idxmax()]
        mine = text[text["setting"] == setting].iloc[0]
        rows.append({"setting": setting, "best baseline": f"{best['model']}: {best['features']}",
                     "baseline_auc": best[setting], "chosen": mine["chosen"],
                     "mmlens_auc": mine["auc_mean"], "gap": mine["auc_mean"] - best[setting],
                     "ens_auc": mine["ens_auc"], "ens_gap": mine["ens_auc"] - best[setting]})
    return pd.DataFrame(rows, columns=BASELINE_GAP_COLUMNS)


def run(cfg: Config, *, seeds: int | None = None, epochs: int | None = None,
        sources: tuple[str, ...] | None = None, synopses: Path | None = None) -> pd.DataFrame:
    """Notebook 10 headless (CLI, bench): its ``run_protocol`` on the repository's ``datasets/``
    with work files under ``cfg.data_dir/protocol``; prints its tables, returns the summary.
    ``seeds`` (how many), ``epochs`` (cap) and ``sources`` as :func:`seed_range`,
    :func:`epoch_cap` and :func:`text_sources`; ``synopses`` as in :func:`prepare` (e.g.
    ``sources=("synopsis",)`` with ``synopses="overviews.csv"``: real synopses on the same
    protocol)."""
    from mmlens._nb.real_data_protocol import run_protocol  # the notebook imports this module

    datasets, cap = datasets_dir(), epoch_cap(epochs)
    work_dir = Path(cfg.data_dir) / "protocol"
    start = time.perf_counter()
    summary = run_protocol(work_dir, datasets, seed_range(seeds), sources=text_sources(sources),
                           synopses=synopses, **({} if cap is None else {"epochs": cap}))
    print(f"protocol: {len(_sources(summary))} text sources in "
          f"{time.perf_counter() - start:.0f} s")
    write_metrics(work_dir / METRICS_FILE, summary)
    base = baselines(datasets / PROTOCOL_DIR)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(comparison(summary).to_string(index=False))
        print(widths(summary).round(4).to_string())
        print(choice_steps(summary).round(4).to_string(index=False))
        print(f"measured on this protocol ({PROTOCOL_DIR}/README.md):")
        print(base.to_string(index=False))
        print(lifts(summary).round(4).to_string(index=False))
        gaps = against_baselines(summary, base)
        if gaps.empty:
            print(f"(the baselines were measured with the {TEXT_SOURCE} text, not in this run)")
        else:
            print(gaps.round(4).to_string(index=False))
    return summary


METRICS_FILE = "metrics.json"


def write_metrics(target: Path, summary: pd.DataFrame) -> Path:
    """The summary rows (without their ``val_boot`` arrays) and, per text source and setting,
    the model chosen on validation."""
    from mmlens.train import evaluate

    picks = {f"{r['text']}/{r['setting']}": evaluate.clean(
        {k: r[k] for k in ("chosen", "val_auc_mean", "auc_mean", "auc_std", "ens_auc")})
        for r in chosen(summary).to_dict("records")}
    rows = [evaluate.clean(r) for r in
            summary.drop(columns="val_boot", errors="ignore").to_dict("records")]
    artifacts.write_json(target, {"chosen_on_validation": picks, "summary": rows})
    return target
