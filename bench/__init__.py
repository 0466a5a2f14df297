"""kvmm's benchmark harness: kvmm and QEMU side by side on the same guest
kernel. Run `python -m bench NAME` from the repository root; docs/benchmarks.md
says what each figure means.

Adding a benchmark: a module `bench/NAME.py` with `run(setup)`, a generator
of figures made with `common.figure(...)` (see bench/common.py).
"""
