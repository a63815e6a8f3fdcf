# The README's two commands are `make quickstart` and `make test`; .ci/run calls `make test`.
# Everything they need is installed here: the Python environment (.venv, from pyproject extras)
# and the control-plane binaries (built from the Go module proxy, cached in ~/.cache/llmops).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= serve,train,dev
PYTEST_ARGS ?=
# Models come from packages and local folders: never from a hub at run time.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

INFINITY_VENV ?= $(HOME)/.cache/llmops/venvs/infinity

.PHONY: help install system-deps binaries lint typecheck unit test quickstart down clean bench-deps bench-embedding \
	bench-operator bench-retrieval bench-rag fault bench-scale

help:
	@echo "make quickstart   bring up the local stack (control plane, ...) and show it working"
	@echo "make down         tear the quickstart down"
	@echo "make test         install everything, lint, type-check, run every test"
	@echo "make unit         fast unit tests only (no cluster)"

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# Debian services the tests run for real (redis-server for the RAG cache); installed only if absent,
# never started as a system service.
system-deps:
	command -v redis-server >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server)

binaries: install
	$(PY) -m llmops_dev.cli cluster build

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
test: system-deps binaries lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# The fault suite at the sizes issue 9 asks for (make test runs it scaled down); figures are
# printed at the end and written to fault-report.jsonl.
fault: system-deps binaries
	rm -f fault-report.jsonl
	LLMOPS_FAULT_SCALE=full LLMOPS_FAULT_REPORT=$(CURDIR)/fault-report.jsonl $(PY) -m pytest tests/fault $(PYTEST_ARGS)

quickstart: binaries
	$(PY) -m llmops_dev.cli quickstart

down: install
	$(PY) -m llmops_dev.cli quickstart --down

# Benchmarks (not part of `make test`): wrk from Debian, Infinity in its own virtualenv
# (its pins differ from ours), both outside the clone.
bench-deps: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	test -x $(INFINITY_VENV)/bin/infinity_emb || ($(PYTHON) -m venv $(INFINITY_VENV) && \
		$(INFINITY_VENV)/bin/pip install --quiet 'infinity-emb[server,torch]')

bench-embedding: bench-deps
	$(PY) benchmarks/embedding_throughput.py

bench-operator: binaries
	$(PY) benchmarks/operator_reconcile.py

# 1,000 EmbeddingServices at once, the operator as shipped against its earlier concurrency.
bench-scale: binaries
	$(PY) benchmarks/operator_scale.py

bench-retrieval: install
	$(PY) benchmarks/retrieval_quality.py

bench-rag: bench-deps system-deps
	$(PY) benchmarks/rag_pipeline.py

clean: down
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
