#!/usr/bin/env bash
# Wheels that a bare GPU machine lacks for `make gpu-check` (its image has torch and numpy, not the job's config
# parser or DeepSpeed), put in .whl/ for the check to install offline: run here, where pip reaches PyPI, and carry
# .whl with the checkout. The versions are this .venv's; Ray and MLflow stay out (Ray's wheel alone is over the
# 64 MiB a carried checkout may hold), so the Ray Train GPU tests skip there and the engine's GPU tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TARGET_PYTHON="${TARGET_PYTHON:-3.12}"
rm -rf .whl && mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in tyro docstring-parser typeguard hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
    pins+=("$name==$(version "$name")")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
# DeepSpeed ships a source archive only: build its pure-Python wheel (ops compile at first use, with the GPU's nvcc).
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls -s .whl
