# Two commands for a fresh Debian 12 machine: `make run` and `make test`.
# Everything else here is what those two need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APT_PACKAGES := redis-server:redis-server sipp:sip-tester promtool:prometheus

.PHONY: run test lint typecheck unit system-deps bench-pacing bench-dnc bench-sip simulate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Install the servers the tests and `make run` start, when missing and we are root.
system-deps:
	@missing=""; for pair in $(APT_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (run as root or apt-get install them)"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) system-deps
	$(VENV)/bin/pytest -q

test: $(STAMP) system-deps lint typecheck unit

run: $(STAMP) system-deps
	$(PY) -m dialer demo --sip

simulate: $(STAMP)
	$(PY) -m dialer simulate --scenario config/scenarios/warm.toml --policy predictive --agents 50 --hours 8

bench-pacing: $(STAMP)
	$(PY) -m bench.pacing

bench-dnc: $(STAMP) system-deps
	$(PY) -m bench.dnc

bench-sip: $(STAMP) system-deps
	$(PY) -m bench.sip

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
