"""Builds the emulated test extensions: deepseek_attn's CUDA kernels and launch code compiled as
host C++ against the CPU emulator (csrc/emulation/), loaded as Python modules.

    python tests/emulation/build.py          # build both archs (the tests also build on demand)

One module per emulated arch: `sm80` runs the A100 code paths, `sm89` the FP8 mma.sync paths of
Ada, `sm90` the Hopper (sm90a) kernels — TMA, mbarriers, wgmma — with the launch code choosing
them as it does on an H100 (csrc/ selects the code paths with __CUDA_ARCH__ and
__CUDA_ARCH_FEAT_SM90_ALL). Kernel objects are compiled with GCC's
thread-sanitizer instrumentation, whose calls before every load and store reach the emulator's
checker instead of a sanitizer runtime (unlike address-sanitizer's, they keep the store of a
read-modify-write), and with no vectoriser or store merging (so each access has the size and
alignment the source gives it).
Objects are rebuilt only when a source or header they depend on changes (-MMD depfiles).

`build_module(arch, name, overlay, rebuild)` also builds mutants: `overlay` maps csrc-relative
paths to replacement texts; the kernel objects named in `rebuild` (instantiation file names; by
default every one that includes a replaced file) are recompiled with them and linked first, so
their copies of shared inline code are the ones kept.
"""

import concurrent.futures
import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
EMULATION_INCLUDE = os.path.join(CSRC, "emulation", "include")
BUILD = os.path.join(ROOT, "build", "emulated")
ARCHS = (80, 89, 90)
# Every object sees the arch list of a default CUDA build (as setup.py defines it for all
# sources), so this build "has" the sm90a kernels and the emulated device decides.
CUDA_ARCHS_DEFINE = '-DDEEPSEEK_ATTN_CUDA_ARCHS="8.0+PTX;8.9;9.0a"'

# -fno-gnu-unique: GCC makes the statics of inline functions (device_arch's cache) "unique"
# symbols, which the dynamic linker shares between modules despite -Bsymbolic; each module
# emulates its own device and must keep its own.
COMMON_FLAGS = ["-std=c++20", "-fPIC", "-g0", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
                "-fno-gnu-unique"]
KERNEL_FLAGS = COMMON_FLAGS + [
    "-O1", "-DDEEPSEEK_ATTN_EMULATION=1",
    "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
    "-fno-tree-vectorize", "-fno-store-merging",
]
RUNTIME_FLAGS = COMMON_FLAGS + ["-O2"]


def _torch_flags():
    import torch
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return COMMON_FLAGS + ["-O1", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_API_INCLUDE_EXTENSION_H",
                           "-Wno-sign-compare"] + [f"-isystem{path}" for path in includes]


def _link_flags():
    from torch.utils import cpp_extension

    flags = ["-shared", "-Wl,-Bsymbolic"]  # each module keeps its own kernels and runtime
    for path in cpp_extension.library_paths():
        flags += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return flags + ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _is_fresh(obj, command):
    """True when `obj` was built by `command` and is newer than every file it depends on."""
    stamp, depfile = obj + ".cmd", obj + ".d"
    if not all(os.path.exists(path) for path in (obj, stamp, depfile)):
        return False
    with open(stamp) as handle:
        if handle.read() != " ".join(command):
            return False
    with open(depfile) as handle:
        deps = handle.read().replace("\\\n", " ").split(":", 1)[1].split()
    built = os.path.getmtime(obj)
    return all(os.path.exists(dep) and os.path.getmtime(dep) <= built for dep in deps)


def _compile(source, obj, flags):
    os.makedirs(os.path.dirname(obj), exist_ok=True)
    command = ["g++"] + flags + ["-MMD", "-MF", obj + ".d", "-c", source, "-o", obj]
    if _is_fresh(obj, command):
        return obj
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"emulated build failed:\n{shlex.join(command)}\n{result.stderr[-8000:]}")
    with open(obj + ".cmd", "w") as handle:
        handle.write(" ".join(command))
    return obj


def _depends_on(obj, paths):
    with open(obj + ".d") as handle:
        deps = set(handle.read().replace("\\\n", " ").split(":", 1)[1].split())
    return any(path in deps for path in paths)


def _instantiation_files(family, prefix=""):
    folder = os.path.join(CSRC, family, "kernels", "inst")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(".cu") and name.startswith(prefix))


def _kernel_jobs(arch):
    """(source, object, cuda_arch) of every kernel object of one arch's module."""
    # The GEMMs have per-arch paths, and on sm90 so has the 128/128 attention forward (the
    # Hopper kernel); everything else is compiled once, as sm80, and shared.
    probes = os.path.join(ROOT, "tests", "emulation", "probe_kernels.cu")
    specific = _instantiation_files("fp8", "gemm")
    if arch == 90:  # its probes include the Hopper ones
        specific += _instantiation_files("attention", "flash_fwd_d128x128") + [probes]
    shared = [source for source in _instantiation_files("attention") + _instantiation_files("core")
              + _instantiation_files("fp8", "quantize") + _instantiation_files("mla")
              + _instantiation_files("sparse") + [probes]
              if source not in specific]
    jobs = [(source, os.path.join(BUILD, "sm80", os.path.basename(source) + ".o"), 800)
            for source in shared]
    jobs += [(source, os.path.join(BUILD, f"sm{arch}", os.path.basename(source) + ".o"), arch * 10)
             for source in specific]
    return jobs


def _kernel_flags(cuda_arch, overlay_dir=None):
    includes = [f"-I{EMULATION_INCLUDE}"] + ([f"-I{overlay_dir}"] if overlay_dir else []) + [f"-I{CSRC}"]
    arch_flags = [f"-D__CUDA_ARCH__={cuda_arch}", CUDA_ARCHS_DEFINE]
    if cuda_arch == 900:
        arch_flags.append("-D__CUDA_ARCH_FEAT_SM90_ALL=1")  # sm_90a, as nvcc defines it
    # The .cu instantiation files are compiled as C++ (the whole point of the emulator).
    return KERNEL_FLAGS + arch_flags + ["-x", "c++"] + includes


def _host_jobs():
    """The emulator runtime and the torch-facing code, shared by every module."""
    torch_flags = _torch_flags() + [CUDA_ARCHS_DEFINE, f"-I{EMULATION_INCLUDE}", f"-I{CSRC}"]
    common = os.path.join(BUILD, "host")
    jobs = [(os.path.join(CSRC, "emulation", "runtime.cpp"), os.path.join(common, "runtime.o"),
             RUNTIME_FLAGS + [f"-I{CSRC}"])]
    for source in ("attention/device_call.cpp", "attention/checks.cpp", "core/device_call.cpp",
                   "core/checks.cpp", "fp8/device_call.cpp", "fp8/checks.cpp", "mla/device_call.cpp",
                   "mla/checks.cpp", "sparse/device_call.cpp", "sparse/checks.cpp"):
        jobs.append((os.path.join(CSRC, source),
                     os.path.join(common, source.replace("/", "_") + ".o"), torch_flags))
    jobs.append((os.path.join(ROOT, "tests", "emulation", "emulated_ops.cpp"),
                 os.path.join(common, "emulated_ops.o"), torch_flags))
    return jobs


def _run_parallel(jobs):
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: _compile(*job), jobs))


def build_module(arch, name=None, overlay=None, rebuild=None):
    """Builds (if needed) and imports the module of one emulated arch; returns it."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS} (got {arch})")
    name = name or f"deepseek_attn_emulated_sm{arch}"
    kernel_jobs = [(source, obj, _kernel_flags(cuda_arch)) for source, obj, cuda_arch in _kernel_jobs(arch)]
    objects = _run_parallel(_host_jobs() + kernel_jobs)

    module_dir = os.path.join(BUILD, name)
    os.makedirs(module_dir, exist_ok=True)
    if overlay:
        overlay_dir = os.path.join(module_dir, "overlay")
        patched = []
        for relative, text in overlay.items():
            path = os.path.join(overlay_dir, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path) or open(path).read() != text:
                with open(path, "w") as handle:
                    handle.write(text)
            patched.append(os.path.join(CSRC, relative))
        mutant_jobs = [(source, os.path.join(module_dir, os.path.basename(obj)),
                        _kernel_flags(cuda_arch, overlay_dir))
                       for source, obj, cuda_arch in _kernel_jobs(arch)
                       if (os.path.basename(source) in rebuild if rebuild else _depends_on(obj, patched))]
        if not mutant_jobs:
            raise ValueError(f"no kernel object includes {sorted(overlay)}")
        mutants = _run_parallel(mutant_jobs)
        replaced = {os.path.basename(obj) for obj in mutants}
        # Mutant objects first: their copies of shared inline templates are the ones kept.
        objects = mutants + [obj for obj in objects if os.path.basename(obj) not in replaced]

    init_source = os.path.join(module_dir, "module_init.cpp")
    init_text = (f"#include <pybind11/pybind11.h>\n"
                 f"void define_emulated_ops(pybind11::module_& m, int arch);\n"
                 f"PYBIND11_MODULE({name}, m) {{ define_emulated_ops(m, {arch}); }}\n")
    if not os.path.exists(init_source) or open(init_source).read() != init_text:
        with open(init_source, "w") as handle:
            handle.write(init_text)
    objects.append(_compile(init_source, init_source + ".o", _torch_flags()))

    library = os.path.join(module_dir, name + sysconfig.get_config_var("EXT_SUFFIX"))
    link = ["g++"] + objects + _link_flags() + ["-o", library]
    signature = hashlib.sha256(" ".join(link).encode()).hexdigest()
    stamp = library + ".cmd"
    newest = max(os.path.getmtime(obj) for obj in objects)
    if not (os.path.exists(library) and os.path.getmtime(library) >= newest and
            os.path.exists(stamp) and open(stamp).read() == signature):
        result = subprocess.run(link, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"emulated link failed:\n{shlex.join(link)}\n{result.stderr[-8000:]}")
        with open(stamp, "w") as handle:
            handle.write(signature)

    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, library)
    spec = importlib.util.spec_from_file_location(name, library, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


if __name__ == "__main__":
    import torch  # noqa: F401  (the modules link against its libraries)

    for emulated_arch in ARCHS:
        print(build_module(emulated_arch).__file__)
