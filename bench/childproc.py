"""Running one side of a benchmark in a fresh subprocess, so its peak RSS is its own.

A bench script calls :func:`run_child` with its own path and arguments; the child branch of that
script does the work and ends with :func:`report`, one json line. Not a benchmark itself (the
runner only picks up ``bench_*.py``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def peak_rss_kb() -> int:
    """This process's peak RSS in kB (``VmHWM``: unlike ``ru_maxrss``, not inherited at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def report(**values: Any) -> None:
    """The child's last line: ``values`` plus its peak RSS, as json."""
    print(json.dumps({**values, "peak_kb": peak_rss_kb()}), flush=True)


def run_child(script: str, *args: str, echo: str | None = None) -> dict[str, Any]:
    """Run ``script --child *args`` in a fresh interpreter and return its :func:`report`.

    With ``echo``, the child's other output lines are printed, prefixed by it.
    """
    proc = subprocess.run([sys.executable, script, "--child", *args],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if echo is not None:
        for line in lines[:-1]:
            print(f"  {echo}| {line}", flush=True)
    return json.loads(lines[-1])
