"""Registers, spills and stack of every kernel from a build log made with
DEEPSEEK_ATTN_PTXAS_VERBOSE=1 (`pip install -v ...`), as a table and optionally JSON.

    DEEPSEEK_ATTN_PTXAS_VERBOSE=1 pip install -v --no-build-isolation -e . 2>&1 | tee build.log
    python benchmarks/ptxas_report.py build.log [--json benchmarks/results/ptxas.json]
"""

import argparse
import json
import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    return [re.sub(r"\(.*\)$", "", n).replace("deepseek_attn::cuda::", "") for n in out]


def parse(log):
    kernels, current = {}, None
    for line in log.splitlines():
        if (match := ENTRY.search(line)):
            current = (match.group(1), match.group(2))
            kernels[current] = {}
        elif current and (match := FRAME.search(line)):
            kernels[current].update(stack=int(match.group(1)), spill_stores=int(match.group(2)),
                                    spill_loads=int(match.group(3)))
        elif current and (match := USED.search(line)):
            kernels[current]["registers"] = int(match.group(1))
            current = None
    names = demangle([name for name, _ in kernels])
    return [dict(kernel=pretty, arch=arch, **info)
            for pretty, ((_, arch), info) in zip(names, kernels.items())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = sorted(parse(open(args.log).read()), key=lambda r: (r["arch"], r["kernel"]))
    width = max((len(r["kernel"]) for r in rows), default=6)
    print(f"{'kernel':<{width}}  arch    regs  spill st/ld  stack")
    for r in rows:
        print(f"{r['kernel']:<{width}}  {r['arch']:<6}  {r.get('registers', '?'):>4}  "
              f"{r.get('spill_stores', '?'):>5}/{r.get('spill_loads', '?'):<5}  {r.get('stack', '?'):>5}")
    spilling = [r for r in rows if r.get("spill_stores") or r.get("spill_loads")]
    print(f"{len(rows)} kernels, {len(spilling)} with spills")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
