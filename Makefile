# eo-pipeline: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all lint format weights evaluate bench clean

install: $(STAMP)

# Re-install when the dependency declarations change. torch comes from constraints.txt
# (2.13.0 resolves to a local CPU wheel; a newer one would pull several GB of CUDA packages).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/eo demo

# Two workers (one module per worker at a time: module fixtures stay whole; one torch thread
# each), then the timing-sensitive tests alone. `pytest` by itself runs everything serially.
TEST_WORKERS ?= 2

test: install lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m 'not slow and not serial'
	$(VENV)/bin/pytest -m 'serial and not slow'

test-all: install
	$(VENV)/bin/pytest -m ''

lint: install
	$(VENV)/bin/ruff check flows tasks models tests benchmarks
	$(VENV)/bin/mypy
	$(PY) .ci/audit.py

format: install
	$(VENV)/bin/ruff format flows tasks models tests benchmarks
	$(VENV)/bin/ruff check --fix flows tasks models tests benchmarks

# Reproduce the shipped weights (models/weights/README.md): every model on synthetic worlds 1-8,
# ~60 min on 2 cores, a third of it building the worlds the first time.
# One torch thread, as the shipped weights were trained: a float reduction
# split over another number of threads rounds differently (another sha256), and torch's spinning
# threads slow down many times over when another process shares the cores.
WEIGHT_SEEDS := 1,2,3,4,5,6,7,8
weights: install
	OMP_NUM_THREADS=1 $(VENV)/bin/eo train dynamics --seeds $(WEIGHT_SEEDS) --output models/weights
	OMP_NUM_THREADS=1 $(VENV)/bin/eo train change --seeds $(WEIGHT_SEEDS) --output models/weights
	OMP_NUM_THREADS=1 $(VENV)/bin/eo train footprint --seeds $(WEIGHT_SEEDS) --output models/weights

evaluate: install
	$(VENV)/bin/eo evaluate --seed 101,102,103,104

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .eo-cache demo-output
