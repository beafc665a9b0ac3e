"""Builds the single extension deepseek_attn._C.

CUDA sources (every csrc/**/*.cu and csrc/**/cuda.cpp) are compiled when torch is a CUDA build
and a usable CUDA toolkit is found, whether or not a GPU is visible. Switches:
  DEEPSEEK_ATTN_FORCE_CPU=1    build without CUDA sources
  DEEPSEEK_ATTN_FORCE_CUDA=1   fail instead of falling back to CPU-only when no toolkit is found
  TORCH_CUDA_ARCH_LIST         default "8.0+PTX;8.9;9.0a": A100 (and its PTX, which newer GPUs
                               JIT), L40/Ada (the FP8 mma.sync path), H100 (the sm90a kernels).
                               No plain 9.0 image: its Hopper kernels would be __trap() stubs
  MAX_JOBS                     parallel compile jobs (ninja)
Quicker local builds (each leaves a clear error, or the CPU path, where its kernels would run):
  DEEPSEEK_ATTN_DISABLE_BACKWARD=1  no CUDA attention backward (flash_attn_bwd raises on CUDA)
  DEEPSEEK_ATTN_DISABLE_FP8=1       no CUDA FP8 kernels (the FP8 ops take CPU tensors only)
  DEEPSEEK_ATTN_DISABLE_HOPPER=1    no sm90a image (also the runtime switch: read at first launch)
  DEEPSEEK_ATTN_PTXAS_VERBOSE=1  print ptxas register/spill reports for every kernel
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0+PTX;8.9;9.0a"


def log(message):
    print(f"[deepseek_attn build] {message}", file=sys.stderr, flush=True)


def env_flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def is_cuda_toolkit_root(path):
    """A real toolkit root has the runtime library, its header and nvcc."""
    if not path:
        return False
    has_cudart = any(
        os.path.exists(os.path.join(path, sub, "libcudart.so"))
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
    )
    return (
        has_cudart
        and os.path.exists(os.path.join(path, "include", "cuda_runtime.h"))
        and os.path.exists(os.path.join(path, "bin", "nvcc"))
    )


def toolkit_roots_behind_nvcc_on_path():
    """nvcc on PATH may be a wrapper script outside the toolkit: follow symlinks and exec lines."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        with open(nvcc, "rb") as handle:
            head = handle.read(4096)
        if head.startswith(b"#!"):
            for target in re.findall(rb"(/[^\s\"']+/bin/nvcc)\b", head):
                candidates.append(os.path.dirname(os.path.dirname(target.decode())))
    except OSError:
        pass
    return candidates


def find_cuda_toolkit():
    """Returns (root, how it was found) or (None, why not)."""
    candidates = []
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append((os.environ[variable], f"${variable}"))
    candidates += [(root, "the nvcc on PATH") for root in toolkit_roots_behind_nvcc_on_path()]
    candidates.append(("/usr/local/cuda", "the standard install location"))
    candidates += [(root, "the standard install location")
                   for root in sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root, how in candidates:
        if is_cuda_toolkit_root(root):
            return os.path.realpath(root), how
    tried = ", ".join(root for root, _ in candidates) or "nothing"
    return None, f"no directory with lib64/libcudart.so, include/cuda_runtime.h and bin/nvcc (tried {tried})"


def choose_cuda_toolkit():
    """Decides CPU-only or CUDA before torch.utils.cpp_extension reads CUDA_HOME."""
    import torch

    if env_flag("DEEPSEEK_ATTN_FORCE_CPU"):
        log("DEEPSEEK_ATTN_FORCE_CPU=1: building the CPU implementation only")
        return None
    if torch.version.cuda is None:
        log(f"torch {torch.__version__} is a CPU-only build: building the CPU implementation only")
        return None
    root, how = find_cuda_toolkit()
    if root is None:
        message = (f"torch {torch.__version__} is a CUDA build but no CUDA toolkit was found: {how}. "
                   "Set CUDA_HOME to the toolkit root.")
        if env_flag("DEEPSEEK_ATTN_FORCE_CUDA"):
            raise RuntimeError(message)
        log("=" * 78)
        log("WARNING: " + message)
        log("WARNING: building the CPU implementation ONLY; CUDA tensors will not be supported.")
        log("=" * 78)
        return None
    os.environ["CUDA_HOME"] = root
    log(f"CUDA toolkit: {root} (found through {how}); torch {torch.__version__} "
        f"built with CUDA {torch.version.cuda}")
    return root


def relative_sources(pattern):
    return sorted(os.path.relpath(path, ROOT)
                  for path in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def make_extension(cuda_root):
    from torch.utils import cpp_extension

    # csrc/emulation/ is the CPU emulator of the CUDA kernels: test-only (tests/emulation/).
    cpu_sources = [path for path in relative_sources("csrc/**/*.cpp")
                   if os.path.basename(path) != "cuda.cpp" and "/tests/" not in path
                   and not path.startswith("csrc/emulation/")]
    # ATen's parallel_for is an inline OpenMP loop: without -fopenmp it silently runs serially.
    # The libgomp.so.1 that torch loads first is the one used.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    define_macros = []
    if cuda_root is None:
        return cpp_extension.CppExtension(
            "deepseek_attn._C", cpu_sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
            define_macros=define_macros)

    arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    if env_flag("DEEPSEEK_ATTN_DISABLE_HOPPER"):
        arch_list = ";".join(arch for arch in arch_list.replace(" ", ";").split(";")
                             if arch and not arch.startswith("9.0a"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    cuda_sources = relative_sources("csrc/**/cuda.cpp") + relative_sources("csrc/**/*.cu")
    if env_flag("DEEPSEEK_ATTN_DISABLE_BACKWARD"):
        cuda_sources = [path for path in cuda_sources if "/flash_bwd_" not in path]
        define_macros.append(("DEEPSEEK_ATTN_WITHOUT_CUDA_BACKWARD", "1"))
    if env_flag("DEEPSEEK_ATTN_DISABLE_FP8"):
        cuda_sources = [path for path in cuda_sources if not path.startswith("csrc/fp8/")]
    skipped = [name for name in ("BACKWARD", "FP8", "HOPPER")
               if env_flag(f"DEEPSEEK_ATTN_DISABLE_{name}")]
    if skipped:
        log("quick build without: " + ", ".join(skipped) + " (DEEPSEEK_ATTN_DISABLE_*)")
    log(f"TORCH_CUDA_ARCH_LIST={arch_list}; {len(cuda_sources)} CUDA-side sources")
    nvcc_flags = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo",
                  "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                  "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
    if env_flag("DEEPSEEK_ATTN_PTXAS_VERBOSE"):
        nvcc_flags.append("-Xptxas=-v")
    define_macros.append(("DEEPSEEK_ATTN_WITH_CUDA", "1"))
    define_macros.append(("DEEPSEEK_ATTN_CUDA_ARCHS", f'"{arch_list}"'))
    return cpp_extension.CUDAExtension(
        "deepseek_attn._C", cpu_sources + cuda_sources, include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
        define_macros=define_macros)


def main():
    cuda_root = choose_cuda_toolkit()
    from torch.utils import cpp_extension

    setup(
        ext_modules=[make_extension(cuda_root)],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )


main()
