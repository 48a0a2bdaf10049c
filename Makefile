# The README's two commands: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo console test lint bench sysdeps venv clean

sysdeps:
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "alarmgw needs Python >= 3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: sysdeps $(STAMP)

demo: venv
	$(VENV)/bin/alarmgw-sim demo

# The demo site, 50 simulated schools (and the center's web console, when installed),
# kept running until Ctrl-C.
console: venv
	$(VENV)/bin/alarmgw-sim demo --hold --fleet 50

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check gateway center firmware_sim tests bench
	$(VENV)/bin/ruff format --check gateway center firmware_sim tests bench
	$(VENV)/bin/mypy

bench: venv
	$(PY) bench/latency.py
	$(PY) bench/drain.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
