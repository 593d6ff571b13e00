# The two commands of README.md: `make train` and `make test`. Both create
# .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: train test test-fast protos check-protos lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes (the install is editable).
$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m gasgd_tf.main --config=configs/default.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Every benchmark in benchmarks/, one after another (about 15 minutes); rewrites
# the tables in BENCHMARKS.md. BENCH_ARGS=--quick for a short pass.
bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

protos: $(VENV)/.installed-dev
	$(PY) protos/generate.py

check-protos: $(VENV)/.installed-dev
	$(PY) protos/generate.py --check

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check gasgd_tf tests configs protos benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
