"""Builds tin_ops, the compiled interlace op (torch.ops.tin), from cuda/.

The CPU kernels are always built. The CUDA kernels are added when torch is a CUDA build and nvcc is found (CUDA_HOME,
defaulting to /usr/local/cuda); otherwise a message says so and the extension is CPU only. Build once with
`pip install --no-build-isolation -e .` (the Makefile does this); importing tin_core never compiles anything.
"""

import os
from pathlib import Path

from setuptools import setup

# torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper script outside the toolkit.
if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
# Ampere (sm_80) and Hopper (sm_90) binaries, plus PTX that newer GPUs can JIT.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).parent
SOURCES = ["cuda/interlace_cpu.cpp"]
# -fopenmp: at::parallel_for is an inline OpenMP loop; without the flag it silently runs on one thread.
CXX_FLAGS = ["-O3", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


def _cuda_available_for_build() -> tuple[bool, str]:
    if os.environ.get("TIN_BUILD_CUDA", "auto") == "0":
        return False, "TIN_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return False, "nvcc was not found (set CUDA_HOME to the CUDA toolkit root)"
    return True, f"nvcc in {CUDA_HOME}, torch CUDA {torch.version.cuda}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}"


def _extension():
    with_cuda, why = _cuda_available_for_build()
    if with_cuda:
        print(f"tin_ops: building CPU + CUDA kernels ({why})")
        return CUDAExtension(
            "tin_ops",
            SOURCES + ["cuda/interlace_cuda.cu"],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
            extra_link_args=LINK_FLAGS,
            py_limited_api=False,
        )
    print(f"tin_ops: building the CPU kernels only: {why}")
    return CppExtension("tin_ops", SOURCES, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
