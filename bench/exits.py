"""exits: the round trip of a port-I/O and an MMIO exit to the monitor, in µs.

Guest-side (the headline): the guest times N accesses with its TSC and
reports ns per exit in its verdict (`mode=iobench`: N OUTs to port 0x441;
`mode=mmiobench`: N 32-bit writes then N reads at 0xc0000000).
Host-side cross-checks from the monitor's wall time:
  exits.<kind>.host_total    = wall time of the whole run / exits
                               (includes boot and teardown, so an upper bound)
  exits.<kind>.host_marginal = (median wall(N) - median wall(1)) / (exits(N) - exits(1))
                               (boot and teardown cancel out)
"""
from __future__ import annotations

from bench.common import Guest, Setup, alternate, figure, median

N = 10_000                 # accesses per run: 0.3-0.5 s of exits at ~30-40 µs each
BASELINE_N = 1
DEFAULT_RUNS = 7
US_PER_NS = 1e-3
US = 1e6

# (figure kind, guest mode, verdict key, exits per unit of n)
PROBES = (
    ("pio", "iobench", (("pio", "ns_per_exit"),), 1),
    ("mmio", "mmiobench", (("mmio_write", "write_ns_per_exit"),
                           ("mmio_read", "read_ns_per_exit")), 2),
)


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    for kind, mode, keys, exits_per_n in PROBES:
        full = alternate(setup, Guest(mode, (("n", N),)), runs)
        base = alternate(setup, Guest(mode, (("n", BASELINE_N),)), runs, warmup=0)
        for name, key in keys:
            per = {m: median(r.verdict.number(key) * US_PER_NS for r in full[m]) for m in full}
            yield figure(f"exits.{name}.guest", per["kvmm"], per["qemu"], "us")
        total, marginal = {}, {}
        for m in full:
            wall_n = median(r.exited for r in full[m])
            wall_1 = median(r.exited for r in base[m])
            total[m] = wall_n / (N * exits_per_n) * US
            marginal[m] = (wall_n - wall_1) / ((N - BASELINE_N) * exits_per_n) * US
        yield figure(f"exits.{kind}.host_total", total["kvmm"], total["qemu"], "us")
        yield figure(f"exits.{kind}.host_marginal", marginal["kvmm"], marginal["qemu"], "us")
