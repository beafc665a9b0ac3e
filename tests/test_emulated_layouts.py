"""The emulator's PTX fragment tables (csrc/emulation/fragments.h) match CUTLASS CuTe's layouts.

tests/emulation/cute_layout_oracle.cpp evaluates CuTe's MMA_Traits / Copy_Traits layouts on the
host and compares them, lane by lane and value by value, with our tables. CuTe comes from the
pinned nvidia-cutlass wheel (headers only; cached under build/), the CUDA toolkit only supplies
headers CuTe includes, and g++ builds the program: no GPU is needed.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(ROOT, "tests", "emulation", "cute_layout_oracle.cpp")
CUTLASS_VERSION = "4.2.0.0"
CUTLASS_CACHE = os.path.join(ROOT, "build", f"cutlass-{CUTLASS_VERSION}")
HEADERS_IN_WHEEL = "cutlass_library/source/include/"

# The program's tables and the (lane, value) entries each has over all of its operands.
TABLE_CHECKS = {
    "m16n8k16_bf16": 32 * (8 + 4 + 4),  # A, B, C
    "m16n8k16_f16": 32 * (8 + 4 + 4),
    "m16n8k32_e4m3": 32 * (16 + 8 + 4),
    "ldmatrix_x4": 32 * 8,  # 4 registers of 2 b16 elements
    "ldmatrix_x4_trans": 32 * 8,
    "sm90_wgmma_m64n128k16_rs": 128 * (8 + 64),  # A from registers, fp32 D (128 threads)
    "sm90_wgmma_m64n256k16_rs": 128 * 128,  # D of the widest N
}


def _unavailable(reason):
    """Skip for a missing tool or download, except in CI, which must never skip the oracle."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the CuTe layout oracle must run)")
    pytest.skip(reason)


def _cuda_include_dirs():
    """include (and include/cccl, where CUDA 13 keeps libcu++) of the first toolkit found."""
    versioned = sorted(glob.glob("/usr/local/cuda-*"), reverse=True,
                       key=lambda path: [int(n) for n in re.findall(r"\d+", os.path.basename(path))])
    for home in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda", *versioned]):
        include = os.path.join(home, "include")
        if os.path.isfile(os.path.join(include, "cuda_runtime.h")):
            cccl = os.path.join(include, "cccl")
            return [include] + ([cccl] if os.path.isdir(cccl) else [])
    return None


def _cute_include_dir():
    """CuTe's headers from the pinned wheel, downloaded and unpacked once into build/."""
    include = os.path.join(CUTLASS_CACHE, *HEADERS_IN_WHEEL.split("/"))
    if os.path.isfile(os.path.join(include, "cute", "layout.hpp")):
        return include
    os.makedirs(CUTLASS_CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CUTLASS_CACHE) as tmp:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                 f"nvidia-cutlass=={CUTLASS_VERSION}", "-d", tmp],
                capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            _unavailable(f"pip download nvidia-cutlass=={CUTLASS_VERSION} timed out")
        wheels = glob.glob(os.path.join(tmp, "*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            _unavailable(f"could not download nvidia-cutlass=={CUTLASS_VERSION}: "
                         + (result.stdout + result.stderr)[-2000:])
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(tmp, [m for m in wheel.namelist() if m.startswith(HEADERS_IN_WHEEL)])
        # Moved into place in one step, so no run ever sees half-unpacked headers.
        target = os.path.join(CUTLASS_CACHE, "cutlass_library")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(os.path.join(tmp, "cutlass_library"), target)
    return include


def compile_oracle(tmp_path_factory, program):
    """A CuTe oracle program (tests/emulation/*.cpp) compiled with g++; its path."""
    compiler = shutil.which("g++")
    if compiler is None:
        _unavailable("g++ not found")
    cuda_includes = _cuda_include_dirs()
    if cuda_includes is None:
        _unavailable("no CUDA toolkit with include/cuda_runtime.h ($CUDA_HOME, /usr/local/cuda*)")
    # -isystem keeps warnings from CuTe and the toolkit headers out; our code gets -Wall -Wextra.
    system_includes = [flag for path in [_cute_include_dir(), *cuda_includes]
                       for flag in ("-isystem", path)]
    name = os.path.splitext(os.path.basename(program))[0]
    binary = str(tmp_path_factory.mktemp(name) / name)
    command = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-I", os.path.join(ROOT, "csrc"),
               *system_includes, program, "-o", binary]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, " ".join(command) + "\n" + result.stderr[-6000:]
    return binary


def assert_oracle_passes(binary, case, summary):
    """Runs one case (or `all`) and expects exactly `summary` ("...: N checks, 0 mismatches")."""
    result = subprocess.run([binary, case], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and summary in output.splitlines(), output[-6000:]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return compile_oracle(tmp_path_factory, PROGRAM)


@pytest.mark.parametrize("table", list(TABLE_CHECKS))
def test_emulated_fragment_layouts_match_cute(oracle, table):
    summary = f"cute layout oracle: {TABLE_CHECKS[table]} checks, 0 mismatches"
    assert_oracle_passes(oracle, table, summary)
