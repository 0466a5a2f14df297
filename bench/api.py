"""api: kvmm's Firecracker-compatible entry point (`kvmm firecracker`), timed
from outside like Firecracker's own start-up and boot figures, and against
`kvmm run` on the same guest.

Every run boots `mode=hello` with 1 vCPU and 64 MiB, and the guest's ready
moment is the harness's timestamp of the start of its banner on the monitor's
stdout (the guest writes the boot-timer port, then prints the banner).
Figures (median and min over --runs, ms):

  api.socket_ready                 spawn -> `GET /` answered 200
  api.socket_ready.cpu             the monitor's CPU time (all threads) at that moment
  api.instance_start.response      PUT /actions InstanceStart sent -> its 204
  api.instance_start.ready         PUT /actions InstanceStart sent -> the guest's banner
  api.ready.<path>                 spawn -> the guest's banner, for
                                     api:         --api-sock, then GET /, PUT /machine-config,
                                                  PUT /boot-source, PUT /actions over the socket
                                     config_file: --config-file F (API served too)
                                     no_api:      --config-file F --no-api
                                   beside `kvmm run` (`kvmm_run`), with the difference (`delta`)

Figures with a Firecracker peer carry Firecracker's published bound
(SPECIFICATION.md) under `firecracker`; they are not measured here.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (KILL_GRACE, READ_CHUNK, BenchError, Guest, Setup, _round, _tail,
                          median, note, parse_verdict)

DEFAULT_RUNS = 11
MEM = "64M"
MEM_MIB = 64
VCPUS = 1
MODE = "hello"
MS = 1e3
BANNER = b"kvmm-guest:"      # the guest's first line (guest-kernel/README.md, "Output")
SOCKET_POLL = 0.0005         # s between attempts to connect to the API socket
PATHS = ("api", "config_file", "no_api", "run")

# Firecracker's SPECIFICATION.md (on its reference hosts, "given host system
# resources are available"): the VMM "starts (up to API socket availability)
# within `8 CPU ms`" ("the wall-clock time ... typical durations around
# `12 ms`"), and "It takes `<= 125 ms` to go from receiving the Firecracker
# InstanceStart API call to the start of the Linux guest user-space
# `/sbin/init` process" (1 vCPU, 128 MiB, serial console disabled).
FC_START_CPU_MS = 8
FC_START_WALL_TYPICAL_MS = 12
FC_INSTANCE_START_TO_INIT_MS = 125

# A process's CPU-time clock: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) in
# include/linux/posix-timers.h; it sums every thread, living or exited, in ns.
CPUCLOCK_SCHED = 2


def process_cpu_clock(pid: int) -> int:
    return ((~pid) << 3) | CPUCLOCK_SCHED


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used so far, in seconds (0 if it is gone)."""
    try:
        return time.clock_gettime(process_cpu_clock(pid))
    except OSError:
        pass
    # utime + stime of /proc/PID/stat (fields 14 and 15), in clock ticks: 10 ms grains
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# A minimal HTTP/1.1 client: the harness must watch the monitor's console while
# an answer is on its way, so it reads answers itself rather than block in http.client.

def http_request(method: str, path: str, body: dict | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Accept: application/json"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def parse_response(data: bytes) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first whole HTTP response in `data`,
    or None while it is incomplete. A response without Content-Length has no
    body (every answer of the API has one, or is a 204)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    m = _STATUS_LINE.match(data)
    if m is None:
        raise BenchError(f"not an HTTP response: {data[:80]!r}")
    length = 0
    for line in data[m.end():end].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    start = end + 4
    if len(data) < start + length:
        return None
    return int(m.group(1)), data[start:start + length], start + length


def banner_offset(stdout: bytes) -> int | None:
    """Where the guest's banner starts in the console output, or None."""
    if stdout.startswith(BANNER):
        return 0
    i = stdout.find(b"\n" + BANNER)
    return None if i < 0 else i + 1


@dataclass
class Timeline:
    """One monitor process; times in seconds from just before its spawn."""
    path: str
    argv: list
    returncode: int = 0
    ready: float | None = None           # the guest's banner on stdout
    socket_ready: float | None = None    # GET / answered 200
    socket_cpu: float | None = None      # the monitor's CPU seconds then
    instance_start_sent: float | None = None
    instance_start_answered: float | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    api_log: list = field(default_factory=list)


class DirectoryWatch:
    """inotify on a directory for created entries (inotify(7)), so the harness
    can sleep until the monitor binds its socket there."""
    IN_CREATE = 0x100
    IN_NONBLOCK = os.O_NONBLOCK
    IN_CLOEXEC = os.O_CLOEXEC

    def __init__(self, directory: Path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                                 self.IN_CREATE) < 0:
            err = ctypes.get_errno()
            if self.fd >= 0:
                os.close(self.fd)
            raise OSError(err, os.strerror(err))

    def drain(self) -> None:
        """Read the pending events: any creation is a reason to try again."""
        try:
            while os.read(self.fd, READ_CHUNK):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class Child:
    """A monitor process with stdout and stderr on pipes, read and timestamped
    by `poll`; killed and reaped on leaving the `with` block if still there."""

    def __init__(self, argv: list, env: dict, deadline: float, timeline: Timeline):
        self.argv, self.deadline, self.t = argv, deadline, timeline
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                   (os.POSIX_SPAWN_DUP2, err_w, 2)]
        self.start = time.perf_counter()
        try:
            self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        except OSError as e:
            for fd in (out_r, err_r):
                os.close(fd)
            raise BenchError(f"cannot start {argv[0]}: {e.strerror}") from None
        finally:
            for fd in (out_w, err_w, devnull):
                os.close(fd)
        self.pidfd = os.pidfd_open(self.pid)
        self.out, self.err = out_r, err_r
        self.chunks = {out_r: bytearray(), err_r: bytearray()}
        self.open_fds = [out_r, err_r]
        self.exited: float | None = None
        self.reaped = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)
            select.select([self.pidfd], [], [], KILL_GRACE)
            os.waitpid(self.pid, os.WNOHANG)
        for fd in (self.out, self.err, self.pidfd):
            os.close(fd)
        return False

    def now(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise self.failure("did not finish in time (killed)")
        return left

    def poll(self, extra: list, wait: float) -> list:
        """Wait up to `wait` s; read whatever the pipes hold and note the exit;
        return those of `extra` that are readable."""
        watch = self.open_fds + ([self.pidfd] if self.exited is None else []) + extra
        ready, _, _ = select.select(watch, [], [], max(0.0, min(wait, self.remaining())))
        now = self.now()
        for fd in ready:
            if fd == self.pidfd:
                self.exited = now
            elif fd in self.chunks:
                data = os.read(fd, READ_CHUNK)
                if not data:
                    self.open_fds.remove(fd)
                    continue
                self.chunks[fd] += data
                if fd == self.out and self.t.ready is None \
                        and banner_offset(bytes(self.chunks[fd])) is not None:
                    self.t.ready = now
        return [fd for fd in ready if fd in extra]

    def finish(self) -> Timeline:
        while self.exited is None or self.open_fds:
            self.poll([], self.remaining())
        _, wstatus = os.waitpid(self.pid, 0)
        self.reaped = True
        self.t.returncode = os.waitstatus_to_exitcode(wstatus)
        self.t.stdout, self.t.stderr = bytes(self.chunks[self.out]), bytes(self.chunks[self.err])
        return self.t

    def failure(self, why: str) -> BenchError:
        return BenchError(f"{self.t.path}: {why}\n  $ {' '.join(self.argv)}\n"
                          f"{_tail(bytes(self.chunks[self.out]))}"
                          f"{_tail(bytes(self.chunks[self.err]))}")

    # The API socket. ------------------------------------------------------------
    def connect(self, path: str, created: DirectoryWatch | None) -> socket.socket:
        """Connect to the API socket as soon as it accepts: sleep until its file
        exists (no polling that would take CPU from the monitor), then retry
        the short gap between bind() and listen()."""
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                missing = isinstance(e, FileNotFoundError)
            if self.exited is not None:
                raise self.failure("exited before its API socket accepted")
            if missing and created is not None:
                if created.fd in self.poll([created.fd], self.remaining()):
                    created.drain()
            else:
                self.poll([], SOCKET_POLL)

    def call(self, sock: socket.socket, method: str, path: str, body: dict | None,
             expect: int) -> float:
        """Send one request; read its answer while watching the pipes; check
        its status; return the time the request was sent."""
        sent = self.now()
        sock.sendall(http_request(method, path, body))
        data = b""
        while True:
            if sock in self.poll([sock], self.remaining()):
                chunk = sock.recv(READ_CHUNK)
                if not chunk:
                    raise self.failure(f"{method} {path}: the API closed the connection")
                data += chunk
                answer = parse_response(data)
                if answer is not None:
                    break
            elif self.exited is not None and not self.open_fds:
                raise self.failure(f"{method} {path}: exited without answering")
        status, payload = answer[0], answer[1]
        self.t.api_log.append((method, path, status, self.now() - sent))
        if status != expect:
            raise self.failure(f"{method} {path}: HTTP {status}, expected {expect}: "
                               f"{payload[:200].decode('utf-8', 'replace')}")
        return sent


def h11_dir() -> Path:
    """The directory holding kvmm's HTTP dependency, h11."""
    spec = importlib.util.find_spec("h11")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("h11 (the HTTP library of kvmm's API) is not importable by this "
                         "interpreter; run the harness with the project's .venv/bin/python")
    return Path(list(spec.submodule_search_locations)[0])


class ApiBench:
    """Runs the four paths with one interpreter, one environment and one guest."""

    def __init__(self, setup: Setup, tmp: Path):
        self.setup, self.tmp = setup, tmp
        self.python = setup.monitors[0].python
        self.kvmm = [self.python, "-S", "-m", "kvmm"]
        # `-S` (no site-packages; see docs/benchmarks.md) hides h11, which the API
        # server imports: a directory holding only a link to it goes on PYTHONPATH,
        # for every path alike.
        deps = tmp / "pythonpath"
        deps.mkdir()
        (deps / "h11").symlink_to(h11_dir(), target_is_directory=True)
        self.env = dict(os.environ, PYTHONPATH=str(deps))
        self.boot_source = {"kernel_image_path": str(setup.kernel), "boot_args": f"mode={MODE}"}
        self.machine = {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB}
        self.config = tmp / "vm.json"
        self.config.write_text(json.dumps({"boot-source": self.boot_source,
                                           "machine-config": self.machine}))
        self.serial = 0
        try:
            self.created = DirectoryWatch(tmp)
        except OSError as e:
            note(f"api: no inotify ({e.strerror}); polling for the API socket every "
                 f"{SOCKET_POLL * MS:g} ms")
            self.created = None

    def close(self) -> None:
        if self.created is not None:
            self.created.close()

    def _sock(self) -> str:
        self.serial += 1
        return str(self.tmp / f"api-{self.serial}.sock")

    def run(self, path: str) -> Timeline:
        sock_path = self._sock()
        fc = self.kvmm + ["firecracker", "--api-sock", sock_path, "--id", "bench"]
        argv = {"api": fc + ["--boot-timer"],
                "config_file": fc + ["--config-file", str(self.config)],
                "no_api": fc + ["--config-file", str(self.config), "--no-api"],
                "run": self.setup.monitors[0].command(Guest(MODE, mem=MEM, vcpus=VCPUS),
                                                      self.setup.kernel, self.setup.timeout),
                }[path]
        t = Timeline(path, argv)
        with Child(argv, self.env, time.perf_counter() + self.setup.timeout, t) as child:
            if path == "api":
                self._configure_and_start(child, sock_path)
            t = child.finish()
        self._check(t)
        return t

    def _configure_and_start(self, child: Child, sock_path: str) -> None:
        t = child.t
        with child.connect(sock_path, self.created) as s:
            child.call(s, "GET", "/", None, 200)
            t.socket_ready = child.now()
            t.socket_cpu = cpu_seconds(child.pid)
            if t.ready is not None:
                raise child.failure("the guest ran before InstanceStart")
            child.call(s, "PUT", "/machine-config", self.machine, 204)
            child.call(s, "PUT", "/boot-source", self.boot_source, 204)
            t.instance_start_sent = child.call(s, "PUT", "/actions",
                                               {"action_type": "InstanceStart"}, 204)
            t.instance_start_answered = child.now()

    def _check(self, t: Timeline) -> None:
        verdict = parse_verdict(t.stdout.decode("utf-8", "replace"))
        if verdict is None or not verdict.passed or verdict.mode != MODE or t.returncode != 0 \
                or t.ready is None:
            why = ("no verdict line" if verdict is None else
                   f"verdict {verdict.mode} {'PASS' if verdict.passed else 'FAIL'}"
                   if not verdict.passed or verdict.mode != MODE else
                   f"exit status {t.returncode}" if t.returncode else "no banner")
            raise BenchError(f"{t.path}: {why}\n  $ {' '.join(t.argv)}\n"
                             f"{_tail(t.stdout)}{_tail(t.stderr)}")


_FC_BOOT_TIME = re.compile(rb"Guest-boot-time = +(\d+) us")
_RUN_BOOT_TIME = re.compile(rb"\(([0-9.]+) ms after the VM build began\)")


def build_to_ready(stderr: bytes, pattern) -> float:
    """Milliseconds from the VM build to the guest's ready write, as kvmm's boot
    timer reported them on stderr."""
    m = pattern.search(stderr)
    if m is None:
        raise BenchError(f"no boot-timer line in the monitor's stderr:\n{_tail(stderr)}")
    value = float(m.group(1))
    return value / 1000 if pattern is _FC_BOOT_TIME else value


def figure(name: str, kvmm: float, unit: str = "ms", **peer) -> dict:
    """A figure; `peer` is one keyword (firecracker= or kvmm_run=); ratio = kvmm / peer."""
    ((key, value),) = peer.items() or ((None, None),)
    fig = {"name": name, "kvmm": _round(kvmm, 3)}
    if key is not None:
        fig[key] = _round(value, 3)
        fig["ratio"] = _round(kvmm / value, 3) if value else None
    fig["unit"] = unit
    return fig


def rounds(runs: int, warmup: int = 1) -> list[tuple[int, tuple]]:
    """(round, order of the paths): the order reverses every other round, so
    drift on the host hits every path alike; the first `warmup` rounds are not kept."""
    return [(i, PATHS if i % 2 == 0 else tuple(reversed(PATHS)))
            for i in range(warmup + runs)]


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    tmp = Path(tempfile.mkdtemp(prefix="kvmm-bench-api-"))
    try:
        bench = ApiBench(setup, tmp)
        results: dict[str, list[Timeline]] = {p: [] for p in PATHS}
        try:
            for i, order in rounds(runs):
                for path in order:
                    t = bench.run(path)
                    if i >= 1:
                        results[path].append(t)
        finally:
            bench.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note(f"api: mode={MODE} {VCPUS} vCPU {MEM}: {runs} runs of each path (+1 warm-up)")

    api = results["api"]
    for name, values, peer in (
            ("api.socket_ready", [t.socket_ready for t in api],
             {"firecracker": FC_START_WALL_TYPICAL_MS}),
            ("api.socket_ready.cpu", [t.socket_cpu for t in api],
             {"firecracker": FC_START_CPU_MS}),
            ("api.instance_start.response",
             [t.instance_start_answered - t.instance_start_sent for t in api], {}),
            ("api.instance_start.ready", [t.ready - t.instance_start_sent for t in api],
             {"firecracker": FC_INSTANCE_START_TO_INIT_MS})):
        ms = [v * MS for v in values]
        yield figure(f"{name}.median", median(ms), **peer)
        yield figure(f"{name}.min", min(ms))
    # The same span on both paths, by kvmm's own boot timer: from the start of the
    # VM build (InstanceStart; in `kvmm run`, after its options are read) to the
    # guest's ready write.
    built = [build_to_ready(t.stderr, _FC_BOOT_TIME) for t in api]
    built_run = [build_to_ready(t.stderr, _RUN_BOOT_TIME) for t in results["run"]]
    fig = figure("api.build_to_ready.median", median(built), kvmm_run=median(built_run))
    fig["delta"] = _round(median(built) - median(built_run), 3)
    yield fig
    base = [t.ready * MS for t in results["run"]]
    for path in ("api", "config_file", "no_api"):
        ms = [t.ready * MS for t in results[path]]
        fig = figure(f"api.ready.{path}.median", median(ms), kvmm_run=median(base))
        fig["delta"] = _round(median(ms) - median(base), 3)
        yield fig
        yield figure(f"api.ready.{path}.min", min(ms), kvmm_run=min(base))
    steps = {}
    for t in api:
        for method, path, _, seconds in t.api_log:
            steps.setdefault(f"{method} {path}", []).append(seconds * MS)
    note("api: request round trips (median ms): " +
         ", ".join(f"{k} {median(v):.2f}" for k, v in steps.items()))
