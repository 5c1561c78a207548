# mmlens: two commands do everything on a fresh machine with Python 3.11.
#   make demo   run every notebook in order on the sample world, executed copies + metrics in runs/
#   make test   ruff + unit tests + every notebook executed in sample mode
# Also: make bench [STAGE=01], make notebooks (refresh committed outputs), make lock.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmlens-installed
RUNS   ?= runs
STAGE  ?=
# pytest-xdist processes for the unit tests (CI has 2 cores)
TEST_WORKERS ?= 2

# Quiet, offline-safe defaults for every command below.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONWARNINGS := ignore

NOTEBOOKS := $(sort $(wildcard [0-9][0-9]-*.ipynb))
# The notebooks as the series' users test them: nbmake, in order, sample settings from the environment.
NBMAKE_DATA ?= $(RUNS)/nbmake/data
NBMAKE_ENV  := MMLENS_DATA_DIR=$(abspath $(NBMAKE_DATA)) MMLENS_DATASET=sample \
	MMLENS_SAMPLE_PROFILE=small MMLENS_PROTOCOL_SEEDS=1 MMLENS_PROTOCOL_EPOCHS=1 \
	MMLENS_PROTOCOL_SOURCES=title+genres+tags TQDM_MININTERVAL=5

.PHONY: install demo test lint unit notebooks-test notebooks bench lock clean export

$(STAMP): requirements/cpu.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or pass PYTHON=..."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements/cpu.txt
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mmlens demo --out $(RUNS)/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench *.ipynb

unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not notebook" -q -n $(TEST_WORKERS)

notebooks-test: $(STAMP)
	rm -rf $(NBMAKE_DATA)
	$(NBMAKE_ENV) $(BIN)/python -m pytest --nbmake --nbmake-timeout=1800 -p no:cacheprovider -q --durations=3 $(NOTEBOOKS)

test: lint $(STAMP)
	$(BIN)/python -m pytest tests -q -n $(TEST_WORKERS)
	$(MAKE) --no-print-directory notebooks-test

export: $(STAMP)
	$(BIN)/python -m mmlens export

notebooks: $(STAMP)
	$(BIN)/python -m mmlens notebooks --in-place

bench: $(STAMP)
	$(BIN)/python bench/run.py $(STAGE)

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements/cpu.lock.tmp
	@echo "review requirements/cpu.lock.tmp, then move it onto requirements/cpu.txt"

clean:
	rm -rf $(RUNS) data .pytest_cache

# make container-check: the Merlin HugeCTR 23.08 image's Python side, replicated on this CPU
# machine (container/README.md): a Python 3.10 venv ($(CONTAINER_VENV), rebuilt when its inputs
# change) with the image's packages (requirements/container-image.txt) and the Dockerfile's lock
# (requirements/gpu.txt) held to the image's pins; pip check; every mmlens module imports;
# notebooks 03 04 06 07 08 run in sample mode with KERAS_BACKEND=torch. Cannot match the image:
# cuDF, HugeCTR and RAPIDS' pyarrow build (GPU-only or no pip package: NVTabular runs on pandas,
# 07 writes the HugeCTR script and trains its Keras stand-in); torch is PyPI's CUDA 12.4 build of
# 2.5.1, run on the CPU (the image's: the CUDA 12.1 build); fsspec 2022.7.1 (image: 2022.5.0).
CONTAINER_VENV ?= .venv-container
.PHONY: container-check
container-check:
	CONTAINER_VENV=$(CONTAINER_VENV) bash container/check.sh
