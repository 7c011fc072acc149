# Set-up and the two everyday jobs. `make demo` and `make test` create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs torch's CPU-only build first (no CUDA libraries).
TORCH_INDEX ?=

.PHONY: install demo test test-all lint bench clean

$(BIN)/msacl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 --index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/msacl

install: $(BIN)/msacl

demo: install
	$(BIN)/msacl demo --out runs/demo --force

# pytest exits 5 when it collects nothing: that is a failure here, never a silent pass.
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q --timeout=600 --durations=20

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow" --timeout=1800

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
