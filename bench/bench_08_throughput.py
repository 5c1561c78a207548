"""Stage 08 speed: frozen pretrained tables vs ID-only, streamed input vs in-memory tensors.

Builds an ETL output from the default-profile sample world in a temporary directory: 01 converts
the world's release zip, 05 and 06 run for the ``random`` split. The 03/04 tables are random
vectors of the real encoders' widths (ResNet-50 2048, reduced by 05 to HugeCTR's 1024 cap, and
MiniLM 384): their values do not change the cost of a training step, and running the encoders
would take most of the budget.

The model is 08's default (:data:`keras_train.DEFAULT_MODEL_OPTIONS`: the poster table at its 64
main directions, the text table at every dimension). Training throughput is
rows per second over :data:`EPOCHS` whole epochs of the train part, after one untimed epoch
(graph tracing; for the in-memory feeds it also fills the cache). "In-memory tensors" are the
batches of 08's pipeline cached as tensors (``Dataset.cache``: the bench runs on the TensorFlow
backend): the model alone, nothing parsed or cut. The configurations run one after the other in
each of :data:`ROUNDS` rounds (the order rotating), and each ratio is the median over rounds of
that round's ratio: the two sides of a ratio are measured seconds apart, so the machine's slow
swings in speed (over 2x between rounds on a shared 2-core VM) cancel out. Prints

- ``BENCH 08 frozen_vs_id_only_throughput <ratio>`` (target >= 0.7): +poster+text model (frozen
  tables) over the ID-only model, both fed from in-memory tensors;
- ``BENCH 08 streamed_vs_in_memory_throughput <ratio>`` (target >= 0.8): the +poster+text model
  fed by the streamed parquet pipeline (08's ``make_dataset(in_memory=False)``) over the same
  model fed from in-memory tensors;
- ``BENCH 08 frozen_all_dims_vs_id_only_throughput <ratio>`` and ``..._64_dims_...`` (no
  target): as the first, with both tables at every dimension (``content_dim=None``) or both at
  their 64 main directions: what the width costs (notebook 10 shows what it costs in AUC);
- ``BENCH 08 protocol_text_vs_id_only_throughput`` (no target): the model notebook 10 trains on
  real ratings (:data:`PROTOCOL_TRAIN`'s options: 64-d id vectors, one hidden layer of 64 with
  dropout, the text table at every dimension with its users' history neighbours, no poster)
  over that model without content: what the content costs in the model whose real-data numbers
  the README reports;
- ``BENCH 08 <model>_vs_id_only_cpu_throughput`` (no target) for ``frozen``,
  ``frozen_all_dims``, ``frozen_64_dims`` and ``protocol_text``: the same ratios in rows per
  second of the process's CPU time (all threads). A shared VM's slow phases move wall time by up
  to 2x between rounds; CPU time moves less, so this ratio says what the work costs when the
  wall-time one is noisy. It is not the target: it ignores how well a model keeps both cores busy.

``--profile`` also traces :data:`PROFILE_EPOCHS` epochs of the ID-only and the default frozen model
with TensorFlow's profiler and prints, per operation type, the milliseconds each spends per step
(self time summed over the step's ops): where the frozen model's extra time goes.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from machine import describe

from mmlens import artifacts, etl, feature_store, protocol
from mmlens._nb.real_data_protocol import PROTOCOL_TRAIN
from mmlens.config import Config
from mmlens.sample import ensure_world

DIMS = {"poster": 2048, "text": 384}
BATCH_SIZE = 1024
ROUNDS = 7
EPOCHS = 6
SEED = 0
PROFILE_EPOCHS = 3
PROFILE_TOP = 8
#: notebook 10's model on real ratings; its text table at every dimension (chosen there)
PROTOCOL_MODEL = {**PROTOCOL_TRAIN["model_options"], "content_dim": None}


def write_random_tables(cfg: Config) -> None:
    """03/04-shaped outputs (embeddings, row index, meta) of random vectors for every movie."""
    movie_ids = pd.read_parquet(artifacts.require(cfg, "movies"))["movieId"].to_numpy()
    rng = np.random.default_rng(SEED)
    for m, dim in DIMS.items():
        path = artifacts.path(cfg, "embeddings", modality=m)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.standard_normal((len(movie_ids), dim)).astype(np.float32))
        index = pd.DataFrame({"row": np.arange(len(movie_ids), dtype=np.int64),
                              "movieId": movie_ids, f"has_{m}": True})
        artifacts.write_parquet(index, artifacts.path(cfg, "embedding_index", modality=m))
        artifacts.write_json(artifacts.path(cfg, "embedding_meta", modality=m),
                             {"model": f"random-{m} (bench_08)", "dim": dim})


def prepare(work: Path) -> tuple[Path, dict[str, Any]]:
    """01, 05 and 06 (``random`` split) on the sample world; return the ETL dir and schema."""
    from mmlens.train import data

    cfg = Config(data_dir=work, dataset="sample", sample_profile="default", seed=SEED)
    with zipfile.ZipFile(ensure_world(cfg) / "ml-sample.zip") as archive:
        archive.extractall(work / "release")
    protocol.convert_release(cfg, work / "release" / "ml-sample")
    write_random_tables(cfg)
    feature_store.run(cfg)
    etl.run(cfg, splits=("random",))
    return data.require_split(cfg, "random")


def epoch_timer(etl_dir: Path, schema: dict[str, Any], modalities: tuple[str, ...],
                in_memory: bool, epochs: int = EPOCHS,
                **options: Any) -> Callable[[], tuple[float, float]]:
    """A compiled 08 model and its train dataset (cached tensors when ``in_memory``, else the
    streamed pipeline); the returned call trains ``epochs`` epochs and gives rows per second of
    wall time and rows per second of the process's CPU time (all its threads)."""
    from mmlens.train import data, keras_train, models

    keras_train.set_seed(SEED)
    train = data.part_dir(etl_dir, schema, "train")
    rows = data.part_rows(train)
    ds = data.make_dataset(train, schema, batch_size=BATCH_SIZE, modalities=modalities,
                           shuffle=True, seed=SEED, in_memory=in_memory)
    if in_memory:
        ds = ds.cache()
    if options.get("neighbours"):
        options["history"] = keras_train.training_history(train, schema)
    model = models.build("mlp", schema, data.load_tables(etl_dir, schema, modalities),
                         modalities=modalities,
                         **{**keras_train.DEFAULT_MODEL_OPTIONS, **options})
    models.compile_model(model)

    def timed() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
        return (epochs * rows / (time.perf_counter() - start),
                epochs * rows / (time.process_time() - cpu))

    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # tracing, cache filling: untimed
    return timed


def op_times(train: Callable[[], Any], steps: int, log_dir: Path) -> dict[str, float]:
    """Milliseconds per training step by TensorFlow operation type (self time, idle excluded)
    while ``train`` runs ``steps`` steps under the profiler; {} where this TensorFlow build
    lacks the profiler's converter."""
    import json

    import tensorflow as tf

    try:
        from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin
    except ImportError:
        return {}
    tf.profiler.experimental.start(str(log_dir))
    try:
        train()
    finally:
        tf.profiler.experimental.stop()
    traces = [str(p) for p in log_dir.rglob("*.xplane.pb")]
    raw, ok = plugin.xspace_to_tools_data(traces, "framework_op_stats", {})
    if not ok:
        return {}
    table = json.loads(raw)[0]
    names = [c["id"] for c in table["cols"]]
    totals: dict[str, float] = {}
    for row in table["rows"]:
        op = dict(zip(names, (cell.get("v") for cell in row["c"]), strict=True))
        if op["type"] != "IDLE":
            totals[op["type"]] = totals.get(op["type"], 0.0) + op["total_self_time"] / 1000
    return {name: ms / steps for name, ms in totals.items()}


def profile(etl_dir: Path, schema: dict[str, Any], work: Path) -> None:
    """Print where a training step's time goes, ID-only beside the default frozen model."""
    from mmlens.train import data

    steps = PROFILE_EPOCHS * -(-data.part_rows(data.part_dir(etl_dir, schema, "train"))
                               // BATCH_SIZE)
    per_op = {name: op_times(epoch_timer(etl_dir, schema, mods, True, epochs=PROFILE_EPOCHS),
                             steps, work / f"profile-{name}")
              for name, mods in (("id_only", ()), ("frozen", ("poster", "text")))}
    if not all(per_op.values()):
        print("profile: this TensorFlow has no profiler converter; skipped")
        return
    ops = sorted(set().union(*per_op.values()), key=lambda op: -per_op["frozen"].get(op, 0.0))
    print(f"ms per step by op type (self time, {steps} profiled steps each):")
    print(f"  {'op type':24s} {'id_only':>8s} {'frozen':>8s}")
    for op in [*ops[:PROFILE_TOP], "all"]:
        cells = [sum(v.values()) if op == "all" else v.get(op, 0.0) for v in per_op.values()]
        print(f"  {op:24s} {cells[0]:8.2f} {cells[1]:8.2f}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mmlens-bench08-", dir="/tmp"))
    try:
        start = time.perf_counter()
        etl_dir, schema = prepare(work)
        print(f"prepared the sample world in {time.perf_counter() - start:.0f} s")
        content = ("poster", "text")
        timers = {"id_only": epoch_timer(etl_dir, schema, (), True),
                  "frozen": epoch_timer(etl_dir, schema, content, True),
                  "streamed": epoch_timer(etl_dir, schema, content, False),
                  "frozen_all_dims": epoch_timer(etl_dir, schema, content, True,
                                                 content_dim=None),
                  "frozen_64_dims": epoch_timer(etl_dir, schema, content, True, content_dim=64),
                  "protocol_id_only": epoch_timer(etl_dir, schema, (), True, **PROTOCOL_MODEL),
                  "protocol_text": epoch_timer(etl_dir, schema, ("text",), True,
                                               **PROTOCOL_MODEL)}
        print(describe())
        speeds: dict[str, list[float]] = {name: [] for name in timers}
        cpu: dict[str, list[float]] = {name: [] for name in timers}
        names = list(timers)
        for k in range(ROUNDS):
            for name in names[k % len(names):] + names[:k % len(names)]:
                wall, per_cpu = timers[name]()
                speeds[name].append(wall)
                cpu[name].append(per_cpu)
        for name, values in speeds.items():
            print(f"  {name}: {statistics.median(values):,.0f} rows/s median "
                  f"({', '.join(f'{v:,.0f}' for v in values)}); "
                  f"{statistics.median(cpu[name]):,.0f} rows per CPU-second")

        def paired(top: str, bottom: str, by: dict[str, list[float]] = speeds) -> float:
            return statistics.median(a / b for a, b in zip(by[top], by[bottom], strict=True))

        print(f"BENCH 08 frozen_vs_id_only_throughput {paired('frozen', 'id_only'):.3f}")
        print(f"BENCH 08 streamed_vs_in_memory_throughput {paired('streamed', 'frozen'):.3f}")
        for width in ("all", "64"):
            print(f"BENCH 08 frozen_{width}_dims_vs_id_only_throughput "
                  f"{paired(f'frozen_{width}_dims', 'id_only'):.3f}")
        print(f"BENCH 08 protocol_text_vs_id_only_throughput "
              f"{paired('protocol_text', 'protocol_id_only'):.3f}")
        for name in ("frozen", "frozen_all_dims", "frozen_64_dims", "protocol_text"):
            base = "protocol_id_only" if name.startswith("protocol") else "id_only"
            print(f"BENCH 08 {name}_vs_id_only_cpu_throughput "
                  f"{paired(name, base, cpu):.3f}")
        if "--profile" in sys.argv[1:]:
            profile(etl_dir, schema, work)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
