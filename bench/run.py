"""Run the benchmarks: `python bench/run.py [STAGE]`.

Each benchmark is a script `bench/bench_<stage>_<name>.py` that prints lines of the form
`BENCH <stage> <name> <number>`, a ratio measured within one run wherever a comparison exists (these
machines are noisy, so absolute timings across runs are not compared). This runner executes the
scripts of one stage (or all), passes their output through, and ends with the collected BENCH lines.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from machine import describe

HERE = Path(__file__).resolve().parent


def scripts(stage: str | None) -> list[Path]:
    """Benchmark scripts, optionally of one stage, in stage order."""
    pattern = f"bench_{stage}_*.py" if stage else "bench_*.py"
    return sorted(HERE.glob(pattern))


def main(argv: list[str]) -> int:
    stage = argv[0] if argv else None
    found = scripts(stage)
    if not found:
        print(f"no benchmarks for stage {stage!r} in {HERE}")
        return 1
    collected: list[str] = []
    failed = 0
    for script in found:
        print(f"--- {script.name}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:])
        collected += [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        failed += proc.returncode != 0
    print("\n=== collected")
    print(describe())
    print("\n".join(collected))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
