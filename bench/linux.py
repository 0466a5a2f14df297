"""linux: a stock Debian kernel (the lane's L2: Debian's cloud kernel, a
bzImage, unmodified) booted by kvmm and by QEMU under a hardware-style KVM.

The project's machines have no hardware KVM, so this benchmark starts the
hardware-KVM lane's L1 (ci/lane/lane.py: QEMU TCG with an emulated SVM CPU,
Debian's generic kernel, kvm_amd, the host's root over 9p) and measures inside
it, both monitors in the same L1, alternating:

  kvmm  `python -S -m kvmm run --kernel bzImage --initrd I --mem 512M --vcpus 2
        --hide-cpuid xsave --cmdline C`
  QEMU  `qemu-system-x86_64 -M microvm,rtc=on -accel kvm -cpu host,-xsave
        -m 512M -smp 2 -kernel bzImage -initrd I -append C` (the host's Debian
        QEMU, run from the 9p root)

with the same initramfs (busybox and ci/lane/l2-bench-init.sh: it prints
LANE-BENCH-INIT first thing, then the kernel's /proc/uptime, then
`poweroff -f`) and command line (`console=ttyS0 reboot=k panic=-1 pci=off
8250.nr_uarts=1 rdinit=/init quiet loglevel=4`). XSAVE is hidden from L2 under
both (QEMU 7.2's TCG ignores the XSETBV intercept; docs/linux-guests.md).

Figures (seconds of L1 wall time, medians over the runs; L1 runs 10-15x
slower than native, so compare the ratios, not the absolute times):

  linux.init       process start -> the init marker on the console
  linux.poweroff   process start -> the monitor process has exited
  linux.load       process start -> the kernel's clock starts (init time minus
                   the uptime the guest printed): monitor start-up, loading the
                   images, firmware and real-mode set-up (QEMU), decompression
  linux.kernel     the kernel's uptime at init: kernel boot to init
  linux.shutdown   init marker -> the monitor has exited: init's work, the
                   kernel's power-off, the monitor noticing ACPI S5 and exiting

  linux.load.monitor  process start -> the guest's clock zero (the kvm-clock
                   offset the kernel logs, "kvm-clock: using sched offset of N
                   cycles", and the kernel-log time of init's marker, taken
                   from the init time): the monitor's own start-up
  linux.load.guest the guest's clock zero -> kvm-clock taken as sched_clock
                   (early in setup_arch): firmware and real-mode set-up
                   (QEMU), decompression, the kernel's first steps

`linux.load + linux.kernel + linux.shutdown` = `linux.poweroff` per run, and
`linux.load.monitor + linux.load.guest` = `linux.load` (the medians need not
add up exactly). The guest's clock zero is where the monitor leaves KVM's
clock: kvmm does not set it, so it counts from KVM_CREATE_VM (kvmm's own VM
set-up, loading the images into guest memory, then falls in
linux.load.guest); QEMU sets it to 0 with KVM_SET_CLOCK as the VM starts
running (its set-up falls in linux.load.monitor). Per-boot timeout:
max(--timeout, 120) s.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import sys
import time

from bench.common import BenchError, Setup, figure, median, note

DEFAULT_RUNS = 5
WARMUP = 1
BOOT_TIMEOUT = 120.0          # seconds per boot inside L1, at least
L1_OVERHEAD = 120.0           # seconds for L1 itself (boot, modules, 9p mount) at most
L2_MEM = "512M"
L2_VCPUS = 2
CMDLINE = ("console=ttyS0 reboot=k panic=-1 pci=off 8250.nr_uarts=1 rdinit=/init "
           "quiet loglevel=4")
INIT_MARKER = b"LANE-BENCH-INIT"
UPTIME_MARKER = b"LANE-BENCH-UPTIME "
CLOCK_MARKER = "LANE-BENCH-CLOCK "
QEMU_IN_L1 = "/usr/bin/qemu-system-x86_64"
RESULT_PREFIX = "LANE-BENCH "
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lane_module():
    spec = importlib.util.spec_from_file_location(
        "kvmm_lane", os.path.join(_REPO, "ci", "lane", "lane.py"))
    lane = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lane)
    return lane


class _Progress:
    """Where L1's console goes: every byte to the log file (run_qemu keeps it),
    the lane's and this benchmark's own lines to stderr as progress."""

    def __init__(self):
        self.partial = b""

    def write(self, data: bytes) -> None:
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            if line.startswith((b"LANE-L1 ", b"LANE-BENCH ", b"lane: ")):
                sys.stderr.buffer.write(b"bench: L1| " + line.rstrip(b"\r") + b"\n")

    def flush(self) -> None:
        sys.stderr.flush()


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    boot_timeout = max(setup.timeout, BOOT_TIMEOUT)
    lane = _lane_module()
    started = time.monotonic()
    try:
        ln = lane.Lane("bench", echo=_Progress())
        kernel, initrd = ln.build_l2("l2-bench-init.sh", modules=())
    except lane.LaneError as e:
        raise BenchError(f"the lane's set-up failed: {e}") from None
    inside = [ln.python, "-S", "-m", "bench.linux", "inside", "--python", ln.python,
              "--qemu", QEMU_IN_L1, "--kernel", kernel, "--initrd", initrd,
              "--runs", str(runs), "--warmup", str(WARMUP), "--timeout", f"{boot_timeout:g}"]
    cmd = " ".join(lane.shell_quote(a) for a in inside)
    boots = 2 * (runs + WARMUP)
    note(f"linux: booting L1 (QEMU TCG, kvm_amd) and, inside it, {boots} boots of "
         f"{os.path.basename(kernel)} alternating kvmm and QEMU; console log "
         f"{ln.path('l1-console.log')}")
    for attempt in (1, 2):
        status, lines, l1_seconds, stopped = ln.run_l1(
            cmd, L1_OVERHEAD + boots * boot_timeout / 2, tap=False)
        if not (stopped or "").startswith("stall") or attempt == 2:
            break
        note(f"linux: L1 stalled under QEMU's TCG ({stopped}); measuring again in a new L1")
    results = [json.loads(line[len(RESULT_PREFIX) + 4:]) for line in lines
               if line.startswith(RESULT_PREFIX + "RUN ")]
    done = any(line.startswith(RESULT_PREFIX + "DONE") for line in lines)
    if stopped or not done:
        tail = "".join(f"  | {line}\n" for line in lines[-30:])
        why = f"L1 was stopped ({stopped})" if stopped else \
            f"the measurement in L1 did not finish (QEMU exit {status})"
        raise BenchError(f"linux: {why}; console log {ln.path('l1-console.log')}\n{tail}")
    by = {m: [r for r in results if r["monitor"] == m] for m in ("kvmm", "qemu")}
    for m, rs in by.items():
        if len(rs) != runs:
            raise BenchError(f"linux: {len(rs)} measured runs of {m}, expected {runs}")
    for key, name in (("init", "linux.init"), ("exit", "linux.poweroff"),
                      ("load", "linux.load"), ("uptime", "linux.kernel"),
                      ("shutdown", "linux.shutdown"), ("clock_zero", "linux.load.monitor"),
                      ("early", "linux.load.guest")):
        k = [r[key] for r in by["kvmm"] if key in r]
        q = [r[key] for r in by["qemu"] if key in r]
        if len(k) != runs or len(q) != runs:
            note(f"linux: no {name} (the guest did not print its kvm-clock offset)")
            continue
        yield figure(name, median(k), median(q), "s")
        if key in ("init", "exit"):
            yield figure(f"{name}.min", min(k), min(q), "s")
    note(f"linux: {runs} runs each (+{WARMUP} warm-up) in L1; L1 ran {l1_seconds:.1f} s, "
         f"the whole benchmark {time.monotonic() - started:.1f} s")


# Inside L1 (`python -S -m bench.linux inside ...`, run by the lane's L1 init). --------
def _boot(argv: list[str], timeout: float) -> dict:
    """Start a monitor; time the init marker and the exit; read the guest's uptime."""
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_DUP2, w, 2),
        (os.POSIX_SPAWN_CLOSE, r)])
    os.close(w)
    pidfd = os.pidfd_open(pid)
    out = b""
    init_at = exited = None
    deadline = start + timeout
    watch = [r, pidfd]
    try:
        while watch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(watch, [], [], left)
            now = time.monotonic()
            if pidfd in ready:
                exited = now
                watch.remove(pidfd)
            if r in ready:
                data = os.read(r, 65536)
                if not data:
                    watch.remove(r)
                    continue
                out += data
                if init_at is None and INIT_MARKER in out:
                    init_at = now
    finally:
        if exited is None:
            os.kill(pid, 9)
        _, wstatus = os.waitpid(pid, 0)
        os.close(r)
        os.close(pidfd)
    status = os.waitstatus_to_exitcode(wstatus)
    text = out.decode("utf-8", "replace")
    uptime = offset_ns = init_s = None
    for line in text.splitlines():
        words = line.split()
        if line.startswith(UPTIME_MARKER.decode()):
            uptime = float(words[1])
        elif line.startswith(CLOCK_MARKER):
            fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            try:
                offset_ns, init_s = int(fields["offset_ns"]), float(fields["init_s"])
            except (KeyError, ValueError):
                pass
    if exited is None or init_at is None or uptime is None or status != 0:
        why = ("did not exit within %g s (killed)" % timeout if exited is None else
               "no init marker" if init_at is None else
               "no uptime line" if uptime is None else f"exit status {status}")
        tail = "\n".join(text.rstrip().splitlines()[-20:])
        raise RuntimeError(f"{why}: {' '.join(argv)}\n{tail}")
    result = {"init": init_at - start, "exit": exited - start, "uptime": uptime,
              "load": init_at - start - uptime, "shutdown": exited - init_at}
    if offset_ns is not None:
        result.update(clock_zero=init_at - start - offset_ns / 1e9 - init_s,
                      early=offset_ns / 1e9, sched_init=init_s)
    return result


def _inside(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.linux inside")
    ap.add_argument("what", choices=["inside"])
    ap.add_argument("--python", required=True)
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--warmup", type=int, default=WARMUP)
    ap.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    args = ap.parse_args(argv)
    monitors = {
        "kvmm": [args.python, "-S", "-m", "kvmm", "run", "--kernel", args.kernel,
                 "--initrd", args.initrd, "--mem", L2_MEM, "--vcpus", str(L2_VCPUS),
                 "--hide-cpuid", "xsave", "--console", "stdout", "--cmdline", CMDLINE,
                 "--timeout", f"{args.timeout:g}"],
        "qemu": [args.qemu, "-M", "microvm,rtc=on", "-accel", "kvm", "-cpu", "host,-xsave",
                 "-m", L2_MEM, "-smp", str(L2_VCPUS), "-nodefaults", "-no-user-config",
                 "-display", "none", "-serial", "stdio", "-no-reboot",
                 "-kernel", args.kernel, "-initrd", args.initrd, "-append", CMDLINE],
    }
    order = list(monitors)
    for i in range(args.warmup + args.runs):
        for name in (order if i % 2 == 0 else order[::-1]):
            try:
                result = _boot(monitors[name], args.timeout)
            except RuntimeError as e:
                print(f"{RESULT_PREFIX}FAIL {name}: {e}", flush=True)
                return 1
            result.update(monitor=name, run=i - args.warmup)
            kind = "RUN" if i >= args.warmup else "WARMUP"
            print(f"{RESULT_PREFIX}{kind} {json.dumps(result)}", flush=True)
    print(f"{RESULT_PREFIX}DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_inside())
