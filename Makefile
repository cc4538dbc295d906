# Two entry points for a fresh machine: `make demo` (install + run the main job on a local regtest
# chain) and `make test` (install + run the test suite). Both create .venv with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv

.PHONY: install demo test bench lock clean-venv

$(VENV)/.installed: pyproject.toml requirements.lock hatch_build.py pipeline/native/txscan.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv
	$(UV) pip sync --python $(PY) --compile-bytecode requirements.lock
	$(UV) pip install --python $(PY) --compile-bytecode --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/poolwatch demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks

# Re-pin every dependency (run after editing pyproject.toml's dependencies).
lock:
	$(UV) pip compile pyproject.toml --extra test --extra celery --extra explore --python-version 3.11 -o requirements.lock

clean-venv:
	rm -rf $(VENV)
