# The two commands of the README:
#   make demo   - environment + demo corpus + the main job end to end on the embedded default
#   make test   - environment + test dependencies + the whole test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := chromium chromium-driver wordnet-base fonts-wqy-microhei postgresql
DEMO_DIR ?= demo

.PHONY: demo test lint env system-deps clean bench

# Debian packages: a CJK font (demo text images), WordNet (concept graph), Chromium (UI tests),
# PostgreSQL (the review database tests run against a throwaway server as well as SQLite).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch first, pinned to the CPU build, or pip pulls a CUDA build of several GB.
$(BIN)/curate: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps torchvision==0.28.0 open-clip-torch==3.3.0 timm==1.0.31 ftfy==6.3.1 wcwidth
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(BIN)/curate

env: system-deps $(BIN)/curate

demo: env
	rm -rf $(DEMO_DIR)
	$(BIN)/curate demo-data $(DEMO_DIR)/corpus
	$(BIN)/curate run pipelines/demo.yaml

test: env lint
	$(BIN)/python -m pytest -q --durations=20 tests

# ruff (configured in pyproject.toml; the same checks run as a pre-commit hook)
lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: env
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
