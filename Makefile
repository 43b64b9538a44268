# overlay-agent: make demo | make test | make bench
# Every target installs what it needs: Debian packages (scripts/ensure-deps.sh),
# a virtualenv under .venv, and Debian's stock kernels under .cache/kernels.

SHELL := /bin/bash
PY_SYS ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
KERNELS := $(CACHE)/kernels
SUITES ?= bookworm trixie
export SOURCE_DATE_EPOCH ?= 1700000000

.PHONY: all deps venv kernels deb test test-unit lint demo bench clean

all: test

deps:
	bash scripts/ensure-deps.sh

venv: $(VENV)/.stamp
$(VENV)/.stamp: setup.cfg pyproject.toml | deps
	$(PY_SYS) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

kernels: venv
	$(PY) -m agent fetch-kernels --cache $(KERNELS) $(SUITES)

# The Debian package, built with debhelper and dh-python (pybuild) from the tracked files.
deb: deps
	bash scripts/build-deb.sh

# All tiers in one run, inside a private mount namespace so no mount leaks to the host.
test: deps venv kernels
	unshare --mount --propagation private $(PY) -m pytest -p no:cacheprovider tests

test-unit: venv
	$(PY) -m pytest -p no:cacheprovider tests/unit

lint: venv
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/mypy

demo: deps venv kernels
	$(PY) scripts/demo.py --kernels $(KERNELS) --out $(CACHE)/demo

bench: deps venv kernels
	unshare --mount --propagation private $(PY) scripts/bench.py --kernels $(KERNELS) --out bench/results.md

clean:
	rm -rf $(CACHE)/demo build out dist
