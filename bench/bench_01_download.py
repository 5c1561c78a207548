"""Stage 01 download: ``download.download`` against curl on one loopback file, and its memory.

A loopback HTTP server (a thread of this process, ``socket.sendfile``, so the server is never the
bottleneck) serves random-byte files named like release zips, of 50 MB and 200 MB, under /tmp
(deleted after). Alternating, for ``ROUNDS`` rounds, on the 200 MB file:

- ``curl -s -o DEST URL`` (timed from this process, curl's start included);
- ``curl -s URL | tee DEST | md5sum``: curl doing the same work as mmlens (write the file and
  hash it as it arrives, the hash on another core), the digest checked afterwards;
- ``mmlens.movielens.download.download(url, dest, md5=...)`` in a fresh subprocess (timed inside
  it around the call: stream to ``.part``, md5 verified, renamed, ``.md5`` written).

The 50 MB file is downloaded by a subprocess too, and the peak RSS (``VmHWM``) of each
downloader subprocess is recorded. Prints `BENCH 01 download_vs_curl <best curl time / best mmlens
time>` (target >= 0.8; md5 alone is slower than curl's whole transfer on some machines, see the
printed bound), `BENCH 01 download_vs_curl_md5 <best time of curl | tee | md5sum / best mmlens
time>` (the same work on both sides) and `BENCH 01 download_rss_growth <peak RSS at 200 MB / at
50 MB>` (target ~1).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from childproc import peak_rss_kb, report, run_child

SIZES_MB = (50, 200)
ROUNDS = 3


class _Handler(BaseHTTPRequestHandler):
    """GET of a file in the served folder, sent with ``sendfile``; no ranges."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = Path(self.server.folder) / self.path.lstrip("/")  # type: ignore[attr-defined]
        if "/" in self.path.lstrip("/") or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as fh:
            self.connection.sendfile(fh)


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.folder = str(folder)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_random(path: Path, size_mb: int) -> str:
    """A file of random bytes; returns its md5."""
    rng = np.random.default_rng(size_mb)
    digest = hashlib.md5()
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            block = rng.bytes(1 << 20)
            fh.write(block)
            digest.update(block)
    return digest.hexdigest()


def md5_seconds(path: Path) -> float:
    """Seconds to md5 ``path`` (page cache), best of three: the floor of a verified download."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        best = min(best, time.perf_counter() - start)
    return best


def child(url: str, dest: Path, md5: str) -> None:
    """Download in this fresh process; print json with seconds and peak RSS (kB)."""
    from mmlens.movielens.download import download

    before = peak_rss_kb()
    start = time.perf_counter()
    download(url, dest, md5=md5, force=True)
    seconds = time.perf_counter() - start
    report(seconds=seconds, before_kb=before)


def run_mmlens(url: str, dest: Path, md5: str) -> dict:
    result = run_child(__file__, url, str(dest), md5)
    _clean(dest)
    return result


def run_curl(url: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(dest), url], check=True)
    seconds = time.perf_counter() - start
    _clean(dest)
    return seconds


def run_curl_md5(url: str, dest: Path, md5: str) -> float:
    """``curl | tee | md5sum``: download, write and hash concurrently; check the digest."""
    script = f"set -o pipefail; curl -s -f '{url}' | tee '{dest}' | md5sum"
    start = time.perf_counter()
    proc = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.stdout.split()[0] != md5:
        raise RuntimeError(f"curl | md5sum gave {proc.stdout!r}, expected {md5}")
    _clean(dest)
    return seconds


def _clean(dest: Path) -> None:
    for p in (dest, dest.with_name(dest.name + ".md5"), dest.with_name(dest.name + ".part")):
        p.unlink(missing_ok=True)


def main() -> None:
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed (apt-get install -y curl)")
    tmp = Path(tempfile.mkdtemp(prefix="mmlens-bench01-download-"))
    try:
        served, out = tmp / "served", tmp / "out"
        served.mkdir()
        out.mkdir()
        md5s = {mb: write_random(served / f"ml-{mb}mb.zip", mb) for mb in SIZES_MB}
        big = max(SIZES_MB)
        with serve(served) as base:
            rss = {mb: run_mmlens(f"{base}/ml-{mb}mb.zip", out / f"ml-{mb}mb.zip", md5s[mb])
                   ["peak_kb"] for mb in SIZES_MB}
            curl, curl_md5, mine = [], [], []
            for _ in range(ROUNDS):
                curl.append(run_curl(f"{base}/ml-{big}mb.zip", out / "curl.zip"))
                curl_md5.append(run_curl_md5(f"{base}/ml-{big}mb.zip", out / "curl.zip", md5s[big]))
                result = run_mmlens(f"{base}/ml-{big}mb.zip", out / "mmlens.zip", md5s[big])
                mine.append(result["seconds"])
                rss[big] = max(rss[big], result["peak_kb"])
                print(f"{big} MB: curl {curl[-1]:.3f} s, curl | md5sum {curl_md5[-1]:.3f} s, "
                      f"mmlens {mine[-1]:.3f} s "
                      f"(peak RSS {result['peak_kb'] / 1024:.0f} MiB)", flush=True)
        print(f"throughput: curl {big / min(curl):.0f} MB/s, mmlens {big / min(mine):.0f} MB/s")
        hashing = md5_seconds(served / f"ml-{big}mb.zip")
        print(f"md5 of the {big} MB file alone: {hashing:.3f} s, so at best "
              f"{min(curl) / hashing:.2f}x curl for any downloader that verifies md5")
        for mb in SIZES_MB:
            print(f"peak RSS of the downloader at {mb} MB: {rss[mb] / 1024:.1f} MiB")
        print(f"BENCH 01 download_vs_curl {min(curl) / min(mine):.3f}")
        print(f"BENCH 01 download_vs_curl_md5 {min(curl_md5) / min(mine):.3f}")
        print(f"BENCH 01 download_rss_growth {rss[big] / rss[min(SIZES_MB)]:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
    else:
        main()
