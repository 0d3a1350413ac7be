# Two commands for users and CI; each sets up .venv on a fresh machine first (about 5 minutes, once):
#   make run    the main job on its embedded default (local Ray, generated data, local MLflow)
#   make test   lint and the whole test suite (make test-fast: the unit tests, no Ray cluster, no subprocess)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tin-setup-done

.PHONY: setup run test test-fast lint bench bench-data bench-temporal gpu-check gpu-wheels clean-build

setup: $(STAMP)

# torch must be installed before the extension builds against it (hence --no-build-isolation); the second pip
# command installs every other dependency and compiles tin_ops (the op) from cuda/ (CPU always, CUDA where nvcc is).
$(STAMP): pyproject.toml setup.py $(wildcard cuda/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel ninja
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"
	$(PY) -c "import tin_core; print('tin_core kernels:', tin_core.interlace_backends())"
	touch $(STAMP)

run: setup
	$(PY) jobs/train_mmit.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not cluster and not integration"

bench: setup
	$(PY) -m benchmarks.op

bench-data: setup
	$(PY) -m benchmarks.data

bench-temporal: setup
	$(PY) -m benchmarks.temporal

# On a GPU machine: CUDA tests and GPU benchmarks (a bare machine's own python3 and torch where there is no .venv).
gpu-check:
	bash benchmarks/gpu_check.sh

# Here, before lending the checkout to a bare GPU machine: the wheels its image lacks (tyro, DeepSpeed), into .whl/.
gpu-wheels: setup
	bash benchmarks/gpu_wheels.sh

clean-build:
	rm -rf build tin_ops*.so $(STAMP)
