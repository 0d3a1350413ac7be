#!/usr/bin/env bash
# The prepared GPU check (`make gpu-check`): build the op for this machine's torch, run the CUDA tests, then the GPU
# benchmarks, whose figures go to benchmarks/RESULTS.md. Uses .venv where `make setup` made one; on a bare GPU
# machine (no .venv, no package index) it uses the system python3 and its torch, plus the wheels carried in .whl/
# (`make gpu-wheels`: tyro and DeepSpeed, for the engine's GPU tests); tests whose packages are missing there (Ray and
# MLflow: the Ray Train GPU tests) skip and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/tin-site .whl/*.whl
        export PYTHONPATH=/tmp/tin-site
    fi
    # Build the op against this machine's torch, in place (the checkout's copy of the extension is for another one).
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-8}" "$PY" setup.py -q build_ext --inplace
fi
"$PY" -c "import torch, tin_core; assert torch.cuda.is_available(), 'no GPU'; print(tin_core.interlace_backends())"
# The benchmarks run even when a test fails: one pass on a lent machine should bring back everything it can.
tests=0 bench=0
"$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py tests/test_ops.py -rs || tests=$?
"$PY" -m benchmarks.gpu || bench=$?
# On a lent machine ($OUT comes back to the session): the figures, to commit from there.
if [ -n "${OUT:-}" ]; then cp benchmarks/RESULTS.md "$OUT/RESULTS.md"; fi
if [ "$tests" -ne 0 ]; then echo "gpu-check: the tests failed (pytest exit $tests); the figures above are unchecked" >&2; fi
if [ "$bench" -ne 0 ]; then echo "gpu-check: the benchmarks failed (exit $bench)" >&2; fi
[ "$tests" -eq 0 ] && exit "$bench"
exit "$tests"
