"""Print the pins that requirements/gpu.txt must not move, as this environment has them.

    python container/image_pins.py requirements/container-image.txt requirements/gpu.txt

One line ``name==version`` for every package named in the image list and not in the lock, at
the version *installed here*: in the Merlin image, the image's real versions (whatever our
reading of its Dockerfiles says); in the replica, the versions the image list installed. The
output is a pip constraints file. Runs on the image's Python 3.10 without extra packages.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

USAGE = "usage: python container/image_pins.py IMAGE_LIST LOCK"


def canonical(name: str) -> str:
    """PEP 503 form of a distribution name (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def names(requirements: Path) -> list[str]:
    """Distribution names of the ``name==version`` lines of a requirements file, in order."""
    found = []
    for line in requirements.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            found.append(canonical(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]))
    return found


def pins(image_list: Path, lock: Path) -> tuple[list[str], list[str]]:
    """(constraint lines, names of the image list that are not installed here)."""
    replaced = set(names(lock))
    lines, missing = [], []
    for name in names(image_list):
        if name in replaced:
            continue
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    return lines, missing


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    lines, missing = pins(Path(argv[0]), Path(argv[1]))
    print("\n".join(lines))
    for name in missing:
        print(f"image_pins: {name} is not installed here: not pinned", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
