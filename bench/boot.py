"""boot: wall time from spawning the monitor to the guest's first console byte
on stdout, and to the monitor's exit, for `mode=hello` with 64 MiB and 1 GiB.

Figures (ms, median and min over the runs): boot.first_byte.<mem>.{median,min},
boot.exit.<mem>.{median,min}.
"""
from __future__ import annotations

import re

from bench.common import Guest, Setup, alternate, figure, median, note

SIZES = ("64M", "1G")
DEFAULT_RUNS = 15
MS = 1e3
# kvmm's own boot timer (port 0x440), printed on stderr: where its time goes.
_KVMM_READY = re.compile(rb"boot timer: guest ready ([0-9.]+) ms")


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    for mem in SIZES:
        results = alternate(setup, Guest("hello", mem=mem), runs)
        kvmm, qemu = results["kvmm"], results["qemu"]
        for what in ("first_byte", "exited"):
            label = "exit" if what == "exited" else what
            k = [getattr(r, what) * MS for r in kvmm]
            q = [getattr(r, what) * MS for r in qemu]
            yield figure(f"boot.{label}.{mem}.median", median(k), median(q), "ms")
            yield figure(f"boot.{label}.{mem}.min", min(k), min(q), "ms")
        ready = [float(m.group(1)) for r in kvmm
                 if (m := _KVMM_READY.search(r.process.stderr))]
        if ready:
            note(f"kvmm {mem}: its boot timer saw the guest ready {median(ready):.1f} ms "
                 "(median) after its own start")
