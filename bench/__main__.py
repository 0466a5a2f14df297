"""`python -m bench NAME [NAME ...]`: run benchmarks, one JSON figure per line
on stdout; progress and notes on stderr.

Exit status: 0 done, 1 a run failed, 2 cannot benchmark here (no QEMU, no
guest kernel, no /dev/kvm, unknown NAME).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
from pathlib import Path

from bench import common

EXIT_FAILED = 1
EXIT_CANNOT = 2
NOT_BENCHMARKS = {"common", "__main__"}


def available() -> list[str]:
    """Every module bench/NAME.py with a run() generator."""
    names = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in NOT_BENCHMARKS or info.name.startswith(("_", "test_")):
            continue
        names.append(info.name)
    return sorted(names)


def _cannot(message: str) -> int:
    print(f"bench: {message}", file=sys.stderr)
    return EXIT_CANNOT


def main(argv: list[str] | None = None) -> int:
    names = available()
    p = argparse.ArgumentParser(prog="python -m bench", description="kvmm vs QEMU benchmarks "
                                "(docs/benchmarks.md).")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(names)}")
    p.add_argument("--runs", type=int, help="runs per figure and monitor (default: each "
                   "benchmark's own)")
    p.add_argument("--kernel", type=Path, default=Path(os.environ.get(
                   "KVMM_GUEST_KERNEL", common.DEFAULT_KERNEL)),
                   help="guest kernel ELF (default guest-kernel/build/kvmm-guest.elf)")
    p.add_argument("--qemu", default=os.environ.get("QEMU", common.QEMU_BINARY),
                   help="QEMU binary (default qemu-system-x86_64 on PATH, or $QEMU)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per guest boot")
    args = p.parse_args(argv)

    unknown = [n for n in args.names if n not in names]
    if unknown:
        return _cannot(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.runs is not None and args.runs < 1:
        return _cannot("--runs must be at least 1")
    qemu = shutil.which(args.qemu)
    if qemu is None:
        return _cannot(f"{args.qemu} not found: the benchmarks compare kvmm with QEMU; install "
                       "it (Debian: apt-get install qemu-system-x86) or give --qemu PATH")
    kernel = args.kernel.resolve()
    if not kernel.is_file():
        return _cannot(f"guest kernel {kernel} does not exist; build it with "
                       "`make -C guest-kernel` or give --kernel PATH")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return _cannot("/dev/kvm is missing or not readable and writable by this user")

    # `python -S -m kvmm` finds the package through the working directory.
    os.chdir(common.REPO)
    setup = common.Setup(kernel=kernel, monitors=(common.Kvmm(sys.executable), common.Qemu(qemu)),
                         runs=args.runs, timeout=args.timeout)
    refreshed = common.refresh_bytecode()
    if refreshed:
        common.note(f"byte-compiled {refreshed} kvmm modules whose cached bytecode was stale")
    common.note(f"kvmm: {sys.executable} -S -m kvmm; qemu: {qemu}; kernel: {kernel}; "
                f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name in args.names:
        module = importlib.import_module(f"bench.{name}")
        try:
            for fig in module.run(setup):
                common.emit(fig)
        except common.BenchError as e:
            print(f"bench: {name}: {e}", file=sys.stderr)
            return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
