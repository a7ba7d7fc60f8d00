# `make test` and `make demo` work on a fresh machine with only Python 3.11: they create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs/demo
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE ?= disabled

.PHONY: install test demo clean

install: $(STAMP)

# torch first and exactly pinned (a local CPU build here, the CUDA build on GPU machines), then the project.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	bash scripts/demo.sh $(OUT)

clean:
	rm -rf $(VENV) outputs .pytest_cache
