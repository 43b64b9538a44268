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

.PHONY: all deps venv kernels deb test test-unit fuzz lint demo bench clean

all: test

deps:
	bash scripts/ensure-deps.sh

venv: $(VENV)/.stamp
# Development tools at the exact versions of constraints.txt: lint runs as a test, so a tool's
# new release must not change the result of `make test`.
$(VENV)/.stamp: setup.cfg pyproject.toml constraints.txt | deps
	$(PY_SYS) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

kernels: venv
	$(PY) -m agent fetch-kernels --cache $(KERNELS) $(SUITES)

# Fails the target when it left anything behind that was not there before: a socket or unit of
# ours, an overlay-agent-* entry in the temporary folder, a mount or a loop device.
LEFTOVERS := $(PY) -m devtools.leftovers

# The Debian package, built with debhelper and dh-python (pybuild) from the tracked files.
deb: deps
	bash scripts/build-deb.sh

# pytest's own temporary folders under .cache, not the system's (pytest keeps its last three)
PYTEST := $(PY) -m pytest -p no:cacheprovider --basetemp=$(CACHE)/pytest

# All tiers in one run, inside a private mount namespace so no mount leaks to the host.
test: deps venv kernels
	$(LEFTOVERS) snapshot $(CACHE)/leftovers-test.json
	status=0; unshare --mount --propagation private $(PYTEST) tests \
	  || status=$$?; $(LEFTOVERS) check $(CACHE)/leftovers-test.json || status=1; exit $$status

test-unit: venv
	$(PYTEST) tests/unit

# The fuzz tier with the long budget (4000 examples a property; `make test` runs 100).
fuzz: venv
	OVERLAY_AGENT_FUZZ=long $(PYTEST) tests/fuzz

lint: venv
	$(VENV)/bin/ruff check agent devtools tests scripts bench
	$(VENV)/bin/mypy

demo: deps venv kernels
	$(LEFTOVERS) snapshot $(CACHE)/leftovers-demo.json
	status=0; $(PY) scripts/demo.py --kernels $(KERNELS) --out $(CACHE)/demo || status=$$?; \
	  $(LEFTOVERS) check $(CACHE)/leftovers-demo.json || status=1; exit $$status

bench: deps venv kernels
	unshare --mount --propagation private $(PY) scripts/bench.py --kernels $(KERNELS) --out bench/results.md

clean:
	rm -rf $(CACHE)/demo build out dist
