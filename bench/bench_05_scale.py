"""Stage 05 at ml-25m scale: rows/s, the ratio against plain pandas, peak RSS (see scale_world.py).

Prints `BENCH 05 scale_rows_per_s`, `BENCH 05 scale_ratio_vs_pandas` (pandas seconds / mmlens
seconds), `BENCH 05 scale_peak_rss_gb` (target <= 12) and `BENCH 05 scale_pandas_peak_rss_gb`.
`MMLENS_BENCH_RATINGS=2000000` makes a quick run.
"""

from __future__ import annotations

from scale_world import bench

if __name__ == "__main__":
    bench("05")
