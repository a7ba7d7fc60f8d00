# `make test` and `make demo` work on a fresh machine with only Python 3.11: they create .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= outputs/demo
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE ?= disabled

.PHONY: install test test-fast demo clean

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

# The inner loop: every test but those marked slow (Ray heads, Ray jobs and Ray Train).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

# The demo: a local Ray head (job server on 127.0.0.1, Python from .venv), the generation job submitted
# to it on the shipped demo bundle, then previews and a report of the synthetic store.
DEMO_N ?= 10
DEMO_WORKERS ?= 2
RAY_PORT ?= 6391
DASH_PORT ?= 8266
# Not Ray's default 52365: a head started beside another Ray instance would get no job agent.
AGENT_PORT ?= 52366
demo: $(STAMP)
	@mkdir -p $(OUT)
	@set -e; export PATH="$(abspath $(BIN)):$$PATH"; \
	setsid ray start --head --block --port=$(RAY_PORT) --dashboard-host=127.0.0.1 --dashboard-port=$(DASH_PORT) \
	    --dashboard-agent-listen-port=$(AGENT_PORT) \
	    --disable-usage-stats >$(OUT)/ray-head.log 2>&1 & head=$$!; \
	trap 'st=$$?; set +e; kill -- -$$head 2>/dev/null; wait $$head 2>/dev/null; exit $$st' EXIT; \
	id=demo-$$$$; addr=http://127.0.0.1:$(DASH_PORT); \
	for i in $$(seq 60); do \
	    ray job submit --address $$addr --submission-id $$id --no-wait --working-dir . -- \
	        python jobs/generate.py --n $(DEMO_N) --workers $(DEMO_WORKERS) --balance diagnosis --out $(abspath $(OUT))/synthetic.zarr \
	        --overwrite >$(OUT)/submit.log 2>&1 && break; sleep 3; \
	done; \
	ray job logs --address $$addr --follow $$id || true; \
	until ray job status --address $$addr $$id 2>&1 | grep -qiE "succeeded|failed|stopped"; do sleep 3; done; \
	ray job status --address $$addr $$id 2>&1 | grep -qi succeeded || { echo "generation job failed"; exit 1; }; \
	factory verify $(OUT)/synthetic.zarr; \
	factory preview $(OUT)/synthetic.zarr --out $(OUT)/preview --overwrite; \
	echo; echo "demo finished:"; \
	echo "  synthetic store : $(abspath $(OUT))/synthetic.zarr  (factory info / factory export / factory.stream.CineStream)"; \
	echo "  previews        : $(abspath $(OUT))/preview/  (GIFs and montages per subject)"; \
	echo "  report          : $(abspath $(OUT))/preview/report.md"

clean:
	rm -rf $(VENV) outputs .pytest_cache
