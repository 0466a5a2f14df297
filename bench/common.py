"""What every benchmark shares: the two monitors and their command lines,
a timed spawn that reads the guest console through a pipe, verdict parsing,
statistics and the JSON figure format.

A benchmark module (`bench/NAME.py`) only decides which guests to boot and
which numbers to report; it does not spawn, time or print anything itself.
"""
from __future__ import annotations

import json
import math
import os
import select
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_KERNEL = REPO / "guest-kernel" / "build" / "kvmm-guest.elf"
QEMU_BINARY = "qemu-system-x86_64"

PAGE_SIZE = 4096
KiB = 1 << 10
MiB = 1 << 20

# QEMU's isa-debug-exit turns a write of v into the exit status (v << 1) | 1
# (hw/misc/debugexit.c); an even status is QEMU's own (0: the guest reset or
# powered off without writing the port).
QEMU_DEBUG_EXIT_PORT = 0xF4
QEMU_DEBUG_EXIT_SIZE = 4

# Writing 5 to /proc/PID/clear_refs resets that process's peak RSS to its
# current RSS (Documentation/filesystems/proc.rst, "clear_refs").
CLEAR_REFS_PEAK_RSS = b"5"

READ_CHUNK = 65536
KILL_GRACE = 5.0            # seconds to wait for a killed child to be reaped
RSS_POLL_INTERVAL = 0.001   # seconds between VmHWM samples (memory runs only)
RSS_FLOOR_MARGIN_KIB = 1024


class BenchError(Exception):
    """A run that could not be measured; the message says which and why."""


# Guests and monitors. --------------------------------------------------------

@dataclass(frozen=True)
class Guest:
    """One boot of the project's guest kernel: its mode, mode parameters
    (`n=...`) and machine size."""
    mode: str
    params: tuple = ()          # (key, value) pairs, in command-line order
    mem: str = "64M"            # both monitors accept K/M/G suffixes
    vcpus: int = 1
    drives: tuple = ()          # raw image paths, one virtio-blk device each

    @property
    def cmdline(self) -> str:
        return " ".join([f"mode={self.mode}"] + [f"{k}={v}" for k, v in self.params])

    def describe(self) -> str:
        return f"{self.cmdline} mem={self.mem}"


class Monitor:
    """How to start one VMM on a guest and how to read its exit status."""
    name = ""

    def command(self, guest: Guest, kernel: Path, timeout: float) -> list[str]:
        raise NotImplementedError

    def guest_status(self, returncode: int) -> int | None:
        """The status the guest wrote to port 0xf4, or None if it wrote none."""
        raise NotImplementedError


class Kvmm(Monitor):
    """kvmm, started with the real interpreter and -S: its boot path imports
    only the standard library, so site-packages (and a pyenv shim, ~75 ms)
    would only add start-up time. `-m kvmm` finds the package because the
    harness runs from the repository root."""
    name = "kvmm"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def command(self, guest: Guest, kernel: Path, timeout: float) -> list[str]:
        drives = [a for path in guest.drives for a in ("--drive", f"path={path}")]
        return [self.python, "-S", "-m", "kvmm", "run", "--kernel", str(kernel),
                "--mem", guest.mem, "--vcpus", str(guest.vcpus), "--cmdline", guest.cmdline,
                "--console", "stdout", "--timeout", f"{timeout:g}", *drives]

    def guest_status(self, returncode: int) -> int | None:
        return returncode if 0 <= returncode <= 0xFF else None


class Qemu(Monitor):
    """QEMU's microvm with the same guest binary (booted through its PVH note).

    `-cpu host,-arch-capabilities`: plain `-cpu host` aborts on this host's
    software-virtualization KVM (setting MSR 0x10a fails).
    `-nodefaults` drops the default serial port, so `-serial stdio` is explicit.
    """
    name = "qemu"

    def __init__(self, binary: str):
        self.binary = binary

    def command(self, guest: Guest, kernel: Path, timeout: float) -> list[str]:
        return [self.binary, "-M", "microvm,acpi=off", "-accel", "kvm",
                "-cpu", "host,-arch-capabilities", "-m", guest.mem, "-smp", str(guest.vcpus),
                "-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio",
                "-no-reboot", "-kernel", str(kernel), "-append", guest.cmdline,
                "-device", f"isa-debug-exit,iobase={QEMU_DEBUG_EXIT_PORT:#x},"
                f"iosize={QEMU_DEBUG_EXIT_SIZE}",
                # QEMU's virtio-mmio is legacy (version 1) unless told otherwise
                *(("-global", "virtio-mmio.force-legacy=false") if guest.drives else ()),
                *[a for i, path in enumerate(guest.drives) for a in (
                    "-drive", f"id=d{i},file={path},format=raw,if=none",
                    "-device", f"virtio-blk-device,drive=d{i}")]]

    def guest_status(self, returncode: int) -> int | None:
        return returncode >> 1 if returncode > 0 and returncode & 1 else None


@dataclass
class Setup:
    """Settings shared by every benchmark of one invocation."""
    kernel: Path
    monitors: tuple              # (Kvmm, Qemu): figures are kvmm / qemu
    runs: int | None = None      # --runs: overrides each benchmark's default
    timeout: float = 20.0        # seconds, per guest boot

    def runs_or(self, default: int) -> int:
        return self.runs if self.runs is not None else default


def refresh_bytecode(package: Path = REPO / "kvmm") -> int:
    """Byte-compile the modules of `package` whose cached bytecode is missing
    or older than the source; return how many. Where PYTHONDONTWRITEBYTECODE
    is set, Python would otherwise compile them again at every kvmm start and
    the boot figures would include it (ci/setup compiles kvmm the same way)."""
    import compileall
    import importlib.util
    stale = []
    for source in sorted(package.rglob("*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            if cached.stat().st_mtime >= source.stat().st_mtime:
                continue
        except FileNotFoundError:
            pass
        stale.append(source)
    for source in stale:
        compileall.compile_file(str(source), quiet=2)
    return len(stale)


# Verdict lines (docs/guest-protocol.md). --------------------------------------

@dataclass
class Verdict:
    """`RESULT <mode> PASS|FAIL [key=value ...]`."""
    mode: str
    passed: bool
    fields: dict

    def number(self, key: str) -> float:
        try:
            return float(self.fields[key])
        except KeyError:
            raise BenchError(f"the verdict of mode {self.mode} has no {key}= "
                             f"(fields: {' '.join(self.fields) or 'none'})") from None
        except ValueError:
            raise BenchError(f"{key}={self.fields[key]!r} in the verdict of mode "
                             f"{self.mode} is not a number") from None


def parse_verdict(console: str) -> Verdict | None:
    """The last verdict line of a console transcript, or None."""
    for line in reversed(console.splitlines()):
        words = line.strip().split()
        if len(words) >= 3 and words[0] == "RESULT" and words[2] in ("PASS", "FAIL"):
            fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
            return Verdict(words[1], words[2] == "PASS", fields)
    return None


# Timed runs. ------------------------------------------------------------------

@dataclass
class Process:
    """What one timed child did. Times are seconds from just before the spawn."""
    argv: list
    returncode: int              # negative: killed by that signal
    first_byte: float | None     # first byte on stdout
    exited: float                # the process was gone (pidfd readable)
    stdout: bytes
    stderr: bytes
    maxrss_kib: int              # wait4 ru_maxrss, see peak_rss_kib
    rss_floor_kib: int = 0       # the harness's own RSS at spawn
    hwm_sampled_kib: int = 0     # largest VmHWM read from /proc while it ran
    cpu_seconds: float = 0.0     # user + system time of the process (wait4)

    @property
    def peak_rss_kib(self) -> int:
        """The child's peak RSS.

        Linux folds the parent's RSS into the child's ru_maxrss at exec
        (exec_mmap() keeps the old mm's high-water mark, and posix_spawn's
        old mm is the parent's), so ru_maxrss is max(child peak, parent RSS).
        The harness resets its own high-water mark first, so when ru_maxrss
        is clearly above the harness's RSS it is the child's exact peak;
        otherwise fall back to the VmHWM samples (a lower bound: growth after
        the last sample, at most RSS_POLL_INTERVAL before the exit, is missed).
        The margin covers the kernel's approximate per-CPU RSS counters."""
        if self.maxrss_is_exact:
            return self.maxrss_kib
        return self.hwm_sampled_kib

    @property
    def maxrss_is_exact(self) -> bool:
        return self.maxrss_kib > self.rss_floor_kib + RSS_FLOOR_MARGIN_KIB


def _status_kib(pid: int | str, key: bytes) -> int:
    """A `Vm...:` line of /proc/PID/status in KiB, 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass
    return 0


def _reset_own_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS; return that in KiB."""
    try:
        with open("/proc/self/clear_refs", "wb") as f:
            f.write(CLEAR_REFS_PEAK_RSS)
    except OSError:
        return _status_kib("self", b"VmHWM:")
    return _status_kib("self", b"VmRSS:")


def spawn(argv: list, timeout: float, sample_rss: bool = False) -> Process:
    """Run argv with stdin from /dev/null and stdout/stderr to pipes; time the
    first stdout byte and the exit; kill it after `timeout` seconds (BenchError).

    The clock starts just before posix_spawn. With `sample_rss`, the child's
    VmHWM is also polled every millisecond and the harness's own peak RSS is reset
    first (see Process.peak_rss_kib)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
               (os.POSIX_SPAWN_DUP2, err_w, 2)]
    floor = _reset_own_peak_rss() if sample_rss else 0
    start = time.perf_counter()
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    except OSError as e:
        for fd in (out_r, out_w, err_r, err_w, devnull):
            os.close(fd)
        raise BenchError(f"cannot start {argv[0]}: {e.strerror}") from None
    for fd in (out_w, err_w, devnull):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    chunks: dict[int, list] = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    first_byte = exited = None
    hwm = 0
    deadline = start + timeout
    reaped = False
    try:
        while exited is None or open_fds:
            now = time.perf_counter()
            if now >= deadline:
                break
            wait = min(deadline - now, RSS_POLL_INTERVAL) if sample_rss else deadline - now
            watch = open_fds + ([pidfd] if exited is None else [])
            ready, _, _ = select.select(watch, [], [], wait)
            now = time.perf_counter()
            for fd in ready:
                if fd == pidfd:
                    exited = now
                    continue
                data = os.read(fd, READ_CHUNK)
                if not data:
                    open_fds.remove(fd)
                    continue
                if fd == out_r and first_byte is None:
                    first_byte = now
                chunks[fd].append(data)
            if sample_rss and exited is None:
                hwm = max(hwm, _status_kib(pid, b"VmHWM:"))
        if exited is None:
            raise BenchError(f"{Path(argv[0]).name} did not finish within {timeout:g} s "
                             f"(killed): {' '.join(argv)}\n{_tail(b''.join(chunks[out_r]))}"
                             f"{_tail(b''.join(chunks[err_r]))}")
        _, wstatus, rusage = os.wait4(pid, 0)
        reaped = True
    finally:
        if not reaped:      # timeout, or the harness itself was interrupted
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], KILL_GRACE)
            os.wait4(pid, os.WNOHANG)
        for fd in (out_r, err_r, pidfd):
            os.close(fd)
    return Process(argv, os.waitstatus_to_exitcode(wstatus), _since(first_byte, start),
                   exited - start, b"".join(chunks[out_r]), b"".join(chunks[err_r]),
                   rusage.ru_maxrss, floor, hwm, rusage.ru_utime + rusage.ru_stime)


def _since(t: float | None, start: float) -> float | None:
    return None if t is None else t - start


def _tail(data: bytes, lines: int = 8) -> str:
    text = data.decode("utf-8", "replace").rstrip()
    if not text:
        return ""
    return "".join(f"  | {line}\n" for line in text.splitlines()[-lines:])


@dataclass
class Run:
    """One guest boot under one monitor, checked: the guest printed a passing
    verdict and wrote status 0."""
    monitor: str
    guest: Guest
    process: Process
    verdict: Verdict

    @property
    def first_byte(self) -> float:
        return self.process.first_byte

    @property
    def exited(self) -> float:
        return self.process.exited


def run_guest(monitor: Monitor, guest: Guest, setup: Setup, sample_rss: bool = False) -> Run:
    argv = monitor.command(guest, setup.kernel, setup.timeout)
    # kvmm stops the guest itself at --timeout (exit 124); leave it room to say so.
    proc = spawn(argv, setup.timeout + KILL_GRACE, sample_rss=sample_rss)
    console = proc.stdout.decode("utf-8", "replace")
    verdict = parse_verdict(console)
    status = monitor.guest_status(proc.returncode)
    if verdict is None or not verdict.passed or status != 0 or proc.first_byte is None:
        why = ("no verdict line" if verdict is None else
               "verdict FAIL" if not verdict.passed else
               f"exit status {proc.returncode} (guest status {status})")
        raise BenchError(f"{monitor.name} {guest.describe()}: {why}\n  $ {' '.join(argv)}\n"
                         f"{_tail(proc.stdout)}{_tail(proc.stderr)}")
    if verdict.mode != guest.mode:
        raise BenchError(f"{monitor.name}: asked for mode {guest.mode}, the guest ran "
                         f"{verdict.mode} (does this kernel know the mode?)")
    return Run(monitor.name, guest, proc, verdict)


def alternate(setup: Setup, guest: Guest, runs: int, warmup: int = 1,
              sample_rss: bool = False) -> dict[str, list[Run]]:
    """`runs` boots of `guest` under each monitor, interleaved (kvmm, qemu,
    qemu, kvmm, ...) so that drift on the host hits both alike; `warmup`
    boots of each first, not kept (page cache, CPU frequency)."""
    results: dict[str, list[Run]] = {m.name: [] for m in setup.monitors}
    for i in range(warmup + runs):
        order = setup.monitors if i % 2 == 0 else tuple(reversed(setup.monitors))
        for monitor in order:
            run = run_guest(monitor, guest, setup, sample_rss=sample_rss)
            if i >= warmup:
                results[monitor.name].append(run)
    note(f"{guest.describe()}: {runs} runs each (+{warmup} warm-up)")
    return results


# Statistics and output. ---------------------------------------------------------

def median(values) -> float:
    return statistics.median(values)


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def figure(name: str, kvmm: float, qemu: float, unit: str, digits: int = 3) -> dict:
    """One reported figure; ratio = kvmm / qemu (null when qemu is 0)."""
    ratio = kvmm / qemu if qemu else None
    return {"name": name, "kvmm": _round(kvmm, digits), "qemu": _round(qemu, digits),
            "ratio": _round(ratio, 3), "unit": unit}


def emit(fig: dict) -> None:
    print(json.dumps(fig), flush=True)


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
