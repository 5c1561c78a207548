"""mmlens on the fixed ml-latest-small protocol (warm and cold) beside the baselines measured on it.

Runs notebook 10's code (``protocol.run``: the notebook's ``run_protocol``, exported from its
``#@save`` cells) on the repository's ``datasets/`` copy: for each text source
(``protocol.TEXT_SOURCES``), 01 convert, 04 text embeddings with the packaged all-MiniLM-L6-v2,
05 the protocol's splits (validation carved from train only), 06 NVTabular ETL, then 09's
ablation (ID-only once, +text per source at each width of notebook 10's ``TEXT_WIDTHS``) with the
08 Keras model. Prints
notebook 10's tables and ``BENCH 09`` lines: ID-only, and per source and setting the model chosen
on validation (test AUC, mean over seeds, and its seed ensemble), and on the baselines' own text
(title+genres+tags) the gap to the best baseline of each split.

``MMLENS_PROTOCOL_SEEDS`` (default 3) and ``MMLENS_PROTOCOL_EPOCHS`` (default: the protocol's
setting) as in notebook 10. Work files go to a temporary directory under /tmp, deleted at the end;
set ``MMLENS_BENCH09_DIR`` to keep and reuse one (the 04 embeddings are then cached there).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mmlens import protocol
from mmlens.config import Config


def in_work_dir(run: Callable[[Path], int]) -> int:
    """``run`` on ``MMLENS_BENCH09_DIR`` (kept) or on a temporary directory (deleted after)."""
    keep = os.environ.get("MMLENS_BENCH09_DIR")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="mmlens-bench09-", dir="/tmp"))
    try:
        return run(work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def bench_key(name: str) -> str:
    """A text source's name as a BENCH line's key (``title+genres`` -> ``title_plus_genres``)."""
    return name.replace("+", "_plus_").replace("-", "_").strip("_")


def main() -> int:
    return in_work_dir(_run)


def _run(work: Path) -> int:
    summary = protocol.run(Config(data_dir=work))
    base = protocol.baselines(protocol.datasets_dir() / protocol.PROTOCOL_DIR)
    ids = summary[summary["variant"] == protocol.ID_ONLY].drop_duplicates("setting")
    for rec in [*ids.to_dict("records"), *protocol.chosen(summary).to_dict("records")]:
        name = "id_only" if rec["variant"] == "id-only" else f"text_{bench_key(rec['text'])}"
        which = "" if rec["variant"] == "id-only" else f", chosen on validation: {rec['chosen']}"
        print(f"BENCH 09 protocol_{rec['setting']}_{name}_auc {rec['auc_mean']:.4f} "
              f"(std {rec['auc_std']:.4f}{which})")
        print(f"BENCH 09 protocol_{rec['setting']}_{name}_seed_ensemble_auc {rec['ens_auc']:.4f}")
    for rec in protocol.against_baselines(summary, base).to_dict("records"):
        print(f"BENCH 09 protocol_{rec['setting']}_auc_minus_best_baseline {rec['gap']:+.4f}")
        print(f"BENCH 09 protocol_{rec['setting']}_seed_ensemble_minus_best_baseline "
              f"{rec['ens_gap']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
