#!/usr/bin/env bash
# The Merlin HugeCTR 23.08 container replicated on a CPU (make container-check; container/README.md).
#
#   container/check.sh          build the replica venv if its inputs changed, then check it:
#                               pip check, every mmlens module imports, notebooks 03 04 06 07 08
#                               run in sample mode (KERAS_BACKEND=torch) in a fresh data dir
#   container/check.sh lock     re-resolve requirements/container-replica.txt and the resolved
#                               part of requirements/gpu.txt from their inputs (then commit them)
#
# The replica: Python 3.10 (the image's) + requirements/container-image.txt (the image's packages)
# + requirements/container-replica.txt (their dependencies, as this machine resolves them)
# + requirements/gpu.txt (what the Dockerfile adds), installed with the image's pins held
# (container/image_pins.py). Settings: CONTAINER_PYTHON (a Python 3.10), CONTAINER_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${CONTAINER_VENV:-.venv-container}
IMAGE=requirements/container-image.txt
REPLICA=requirements/container-replica.txt
LOCK=requirements/gpu.txt
RESOLVED_MARK="# --- resolved"
PIP_QUIET=(--disable-pip-version-check -qq)
export KERAS_BACKEND=torch  # as the Dockerfile sets it

say() { printf '== container-check: %s\n' "$*"; }

find_python310() {
  local root candidate
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for candidate in "${CONTAINER_PYTHON:-}" "$root"/versions/3.10*/bin/python python3.10; do
    if [ -n "$candidate" ] && "$candidate" -c \
        'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

python310() {
  find_python310 || {
    echo "container-check needs Python 3.10, the Merlin image's Python: none found (tried" \
         "\$CONTAINER_PYTHON, pyenv's versions/3.10*, python3.10). Install one (pyenv install" \
         "3.10) or set CONTAINER_PYTHON=/path/to/python3.10." >&2
    exit 1
  }
}

direct_needs() {  # the lines of gpu.txt above the resolved block
  sed "/^$RESOLVED_MARK/,\$d" "$LOCK"
}

inputs_hash() {
  cat "$IMAGE" "$REPLICA" "$LOCK" container/image_pins.py pyproject.toml | sha256sum | cut -c1-16
}

# The replica takes 6.2 GB (PyPI's torch brings its CUDA wheels): stop before a half install.
REPLICA_GB=7
check_room() {
  local free_kb
  free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $((REPLICA_GB * 1024 * 1024)) ]; then
    echo "container-check: the replica needs about $REPLICA_GB GB and $(dirname "$VENV") has" \
         "$((free_kb / 1024)) MB free: free some space or set CONTAINER_VENV to a disk with room." >&2
    exit 1
  fi
}

# The image's packages, then what the Dockerfile adds on top with the image's pins held.
install_replica() {
  local python=$1 started=$SECONDS
  rm -rf "$VENV"
  check_room
  "$python" -m venv "$VENV"
  say "installing the image's packages ($IMAGE, $REPLICA) with $("$python" --version)"
  "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" -r "$IMAGE" -r "$REPLICA"
  "$VENV/bin/python" container/image_pins.py "$IMAGE" "$LOCK" > "$VENV/image-pins.txt"
  say "installing $LOCK with the image's pins held"
  "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" -r "$LOCK" -c "$VENV/image-pins.txt"
  "$VENV/bin/python" -m pip install "${PIP_QUIET[@]}" --no-deps -e .
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  inputs_hash > "$VENV/.inputs"
  say "replica installed in $((SECONDS - started)) s, $(du -sh "$VENV" | cut -f1) on disk"
}

ensure_replica() {
  local python
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.inputs" 2>/dev/null)" = "$(inputs_hash)" ]; then
    say "replica $VENV is current"
  else
    python=$(python310)
    install_replica "$python"
  fi
}

check_replica() {
  local py="$VENV/bin/python" data=runs/container-check started=$SECONDS
  say "pip check"
  "$py" -m pip check
  say "versions: $("$py" -c 'import sys, numpy, pandas, pyarrow, dask, nvtabular, torch, keras, \
transformers; print(f"Python {sys.version.split()[0]}, numpy {numpy.__version__}, pandas \
{pandas.__version__}, pyarrow {pyarrow.__version__}, dask {dask.__version__}, nvtabular \
{nvtabular.__version__}, torch {torch.__version__}, keras {keras.__version__} \
({keras.backend.backend()}), transformers {transformers.__version__}")')"
  say "every mmlens module imports"
  "$py" -c '
import importlib, pkgutil, mmlens
names = [m.name for m in pkgutil.walk_packages(mmlens.__path__, "mmlens.")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(f"{len(names)} modules imported")'
  rm -rf "$data"
  export MMLENS_DATA_DIR="$PWD/$data" MMLENS_DATASET=sample MMLENS_SAMPLE_PROFILE=small \
         MMLENS_DEVICE=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore \
         TQDM_MININTERVAL=60
  local nbmake=("$py" -m pytest -p no:cacheprovider --nbmake --nbmake-timeout=1800 -q)
  say "stages 01 02, notebooks 03 04, stage 05, notebooks 06 07 08 (sample, small) in $data"
  "$py" -m mmlens 01 >/dev/null
  "$py" -m mmlens 02 >/dev/null
  "${nbmake[@]}" 03-Feature-Extraction-Poster.ipynb 04-Feature-Extraction-Text.ipynb
  "$py" -m mmlens 05 >/dev/null
  "${nbmake[@]}" 06-ETL-with-NVTabular.ipynb 07-Training-with-HugeCTR.ipynb \
                 08-Training-with-TensorFlow.ipynb
  say "checks passed in $((SECONDS - started)) s"
}

# Re-resolve the replica's dependency pins and gpu.txt's resolved block in a scratch venv.
lock() {
  local python report
  python=$(python310)
  scratch=$(mktemp -d "$PWD/.container-lock.XXXX")
  trap 'rm -rf "$scratch"' EXIT
  "$python" -m venv "$scratch/venv"
  "$scratch/venv/bin/python" -m pip install "${PIP_QUIET[@]}" -r "$IMAGE"
  "$scratch/venv/bin/python" - "$IMAGE" > "$REPLICA" <<'EOF'
import sys
from importlib.metadata import distributions
sys.path.insert(0, "container")
from image_pins import canonical, names
image = set(names(__import__("pathlib").Path(sys.argv[1])))
print("# The image's packages' own dependencies as this machine resolves them (container/check.sh"
      " lock).\n# The replica installs them with requirements/container-image.txt.")
for d in sorted(distributions(), key=lambda d: canonical(d.metadata["Name"])):
    name = canonical(d.metadata["Name"])
    if name not in image and name not in {"pip", "setuptools"}:
        print(f"{name}=={d.version}")
EOF
  "$scratch/venv/bin/python" container/image_pins.py "$IMAGE" "$LOCK" > "$scratch/pins.txt"
  direct_needs > "$scratch/direct.txt"
  report="$scratch/report.json"
  "$scratch/venv/bin/python" -m pip install "${PIP_QUIET[@]}" --dry-run --report "$report" \
    -r "$scratch/direct.txt" -c "$scratch/pins.txt"
  {
    cat "$scratch/direct.txt"
    echo "$RESOLVED_MARK by container/check.sh lock: what the needs above add to the image ---"
    "$scratch/venv/bin/python" - "$report" "$scratch/direct.txt" <<'EOF'
import json, sys
sys.path.insert(0, "container")
from image_pins import canonical, names
direct = set(names(__import__("pathlib").Path(sys.argv[2])))
torch_cuda = ("nvidia-", "triton")  # pinned exactly by the torch build itself (cu121 or PyPI's)
for item in sorted(json.load(open(sys.argv[1]))["install"],
                   key=lambda i: canonical(i["metadata"]["name"])):
    name = canonical(item["metadata"]["name"])
    if name not in direct and not name.startswith(torch_cuda):
        print(f"{name}=={item['metadata']['version']}")
EOF
  } > "$scratch/gpu.txt"
  mv "$scratch/gpu.txt" "$LOCK"
  say "rewrote $REPLICA and the resolved block of $LOCK: review git diff, then commit"
}

case "${1:-check}" in
  check) ensure_replica; check_replica ;;
  lock) lock ;;
  *) echo "usage: container/check.sh [check|lock]" >&2; exit 2 ;;
esac
