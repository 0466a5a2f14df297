"""net: virtio-net on a TAP, kvmm against QEMU's user-space virtio-net
(`-netdev tap,vhost=off` with `-device virtio-net-device` on microvm's
virtio-mmio), the same guest binary and command line.

One network namespace (kvmm-bench-<pid>) holds a TAP with 10.200.9.1/24;
the guest is 10.200.9.2/24. Each monitor runs inside the namespace
(`ip netns exec NS ...`, which execs in place: the spawned pid is the
monitor's) while this process talks to the guest from a socket made in the
same namespace. All traffic stays in that namespace; it is deleted at the end.

  net.tx.<size>: guest -> host UDP (`mode=netbench dir=tx`, payload <size>
      bytes): datagrams the host received per second, from its first to its
      last, and the payload MB/s.
  net.rx.<size>: host -> guest UDP (`mode=netbench dir=rx`): the host sends
      as fast as Python can for the run; the guest counts what it received
      (its verdict: pps, from its first datagram to its last).
  net.<dir>.<size>.cpu_per_mpkt: the monitor's CPU time (utime + stime from
      /proc/PID/stat) over the traffic window, per million datagrams
      delivered, in seconds.
  net.ping.rtt_median / rtt_p90: ICMP echo round trip host -> guest
      (`mode=netecho`), 1000 echoes per run one after the other, in µs.

Figures are medians over the runs. Throughput ratios (kvmm / QEMU) above 1
mean kvmm is faster; latency and CPU ratios below 1 mean kvmm is better.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

from bench.common import (
    KILL_GRACE, BenchError, Guest, Kvmm, Qemu, Setup, figure, median, note, parse_verdict,
    spawn,
)

SIZES = (64, 1400)
DEFAULT_RUNS = 3
SECONDS = 2                      # traffic per throughput run
PINGS = 1000                     # echoes per run, one after the other
PORT = 9000
ECHO_PORT = 7
TAP = "kbench0"
HOST_IP = "10.200.9.1"
GUEST_IP = "10.200.9.2"
PREFIX = 24
GUEST_MAC = "02:00:0a:c8:09:02"
READY_TIMEOUT = 15.0             # s for the guest to answer its first ping
SOCKET_BUFFER = 1 << 22
SAMPLE_INTERVAL = 0.05           # s between samples of the TAP counters and CPU time
FRAME_OVERHEAD = 14 + 20 + 8     # Ethernet, IPv4 and UDP headers around a payload
CLONE_NEWNET = 0x40000000        # include/uapi/linux/sched.h
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP_PAYLOAD = 56                # ping's default
MB = 1e6
US = 1e6
CLK_TCK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


# The namespace. ---------------------------------------------------------------------
class Namespace:
    def __init__(self):
        self.name = f"kvmm-bench-{os.getpid()}"
        self._ip = shutil.which("ip")
        if self._ip is None:
            raise BenchError("`ip` (iproute2) is needed for the network benchmark")
        if os.geteuid() != 0:
            raise BenchError("the network benchmark needs root (a network namespace, a TAP)")

    def ip(self, *args: str) -> None:
        proc = subprocess.run([self._ip, *args], capture_output=True, text=True, timeout=30)
        if proc.returncode:
            raise BenchError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def __enter__(self) -> Namespace:
        self.ip("netns", "add", self.name)
        try:
            self.ip("-n", self.name, "link", "set", "lo", "up")
            self.ip("-n", self.name, "tuntap", "add", "dev", TAP, "mode", "tap")
            self.ip("-n", self.name, "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", TAP)
            self.ip("-n", self.name, "link", "set", TAP, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        subprocess.run([self._ip, "netns", "del", self.name], capture_output=True, timeout=30)

    def prefix(self) -> list[str]:
        return [self._ip, "netns", "exec", self.name]

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket made inside the namespace (it stays there)."""
        target = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(target, CLONE_NEWNET):
                raise BenchError(f"setns: {os.strerror(ctypes.get_errno())}")
            try:
                return socket.socket(family, kind, proto)
            finally:
                if _libc.setns(home, CLONE_NEWNET):
                    raise BenchError(f"setns back: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
            os.close(home)


# The monitors' command lines. ----------------------------------------------------------
def argv(monitor, guest: Guest, setup: Setup, ns: Namespace) -> list[str]:
    base = monitor.command(guest, setup.kernel, setup.timeout)
    if isinstance(monitor, Kvmm):
        extra = ["--net", f"tap={TAP},mac={GUEST_MAC}"]
    elif isinstance(monitor, Qemu):
        # microvm's virtio-mmio is legacy (version 1) unless told otherwise; the
        # guest drives version 2 only, as kvmm offers.
        extra = ["-global", "virtio-mmio.force-legacy=false",
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                 "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"]
    else:
        raise BenchError(f"no network options for monitor {monitor.name}")
    return ns.prefix() + base + extra


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def find_pid(marker: str, deadline: float) -> int:
    """The pid of the process whose command line contains `marker` (the
    monitor: `ip netns exec` executes it in place)."""
    needle = marker.encode()
    me = os.getpid()
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if needle in cmdline and b"netns" not in cmdline:
                return int(entry)
        time.sleep(0.005)
    raise BenchError(f"no process with {marker!r} in its command line")


class Traffic:
    """What the host side measured in one run."""

    def __init__(self):
        self.packets = 0
        self.bytes = 0
        self.seconds = 0.0
        self.cpu = 0.0
        self.rtts: list[float] = []


def run_with_traffic(monitor, guest: Guest, setup: Setup, ns: Namespace, traffic) -> tuple:
    """Boot `guest` under `monitor` in the namespace (spawned on a helper thread)
    while `traffic(pid_of, alive)` runs here; check the verdict; return
    (verdict, Traffic)."""
    cmd = argv(monitor, guest, setup, ns)
    out: dict = {}

    def boot():
        try:
            out["proc"] = spawn(cmd, setup.timeout + KILL_GRACE)
        except BaseException as e:          # handed to the main thread
            out["error"] = e
    thread = threading.Thread(target=boot, name=f"bench-{monitor.name}", daemon=True)
    thread.start()
    marker = f"tap={TAP}" if isinstance(monitor, Kvmm) else f"ifname={TAP}"
    pid: list[int] = []

    def pid_of() -> int:
        if not pid:
            pid.append(find_pid(marker, time.monotonic() + READY_TIMEOUT))
        return pid[0]
    try:
        measured = traffic(pid_of, thread.is_alive)
    finally:
        thread.join(setup.timeout + 2 * KILL_GRACE)
    if "error" in out:
        raise out["error"]
    proc = out["proc"]
    console = proc.stdout.decode("utf-8", "replace")
    verdict = parse_verdict(console)
    status = monitor.guest_status(proc.returncode)
    if verdict is None or not verdict.passed or status != 0:
        tail = "\n".join(f"  | {line}" for line in console.splitlines()[-6:])
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise BenchError(f"{monitor.name} {guest.describe()}: "
                         f"{'no verdict' if verdict is None else 'verdict ' + str(verdict.passed)}"
                         f", exit status {proc.returncode}\n  $ {' '.join(cmd)}\n{tail}\n{err}")
    return verdict, measured


# Host-side traffic. --------------------------------------------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    payload = bytes(range(ICMP_PAYLOAD))
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload),
                       ident, seq) + payload


def _ping_once(sock: socket.socket, ident: int, seq: int, timeout: float) -> float | None:
    """Round trip of one echo in seconds, None if no reply within `timeout`."""
    packet = _echo_request(ident, seq)
    t0 = time.perf_counter()
    sock.sendto(packet, (GUEST_IP, 0))
    deadline = t0 + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except (TimeoutError, BlockingIOError):
            return None
        t1 = time.perf_counter()
        ihl = (data[0] & 0x0F) * 4
        kind, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
        if kind == ICMP_ECHO_REPLY and rid == ident and rseq == seq:
            return t1 - t0


def _wait_answering(sock: socket.socket, ident: int, alive) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    seq = 0
    while time.monotonic() < deadline and alive():
        seq += 1
        if _ping_once(sock, ident, seq, 0.02) is not None:
            return
    raise BenchError("the guest did not answer pings within "
                     f"{READY_TIMEOUT:g} s (is its NIC up?)")


def tap_counters(pid: int) -> tuple[int, int] | None:
    """(packets, bytes) the kernel received on the TAP, i.e. what the monitor
    wrote to it: /proc/PID/net/dev shows the namespace of process PID."""
    try:
        with open(f"/proc/{pid}/net/dev", "rb") as f:
            for line in f:
                name, sep, rest = line.partition(b":")
                if sep and name.strip() == TAP.encode():
                    fields = rest.split()
                    return int(fields[1]), int(fields[0])
    except OSError:
        pass
    return None


def tx_sink(ns: Namespace):
    """Count what the monitor writes to the TAP while the guest sends (the TAP's
    receive counters, sampled every SAMPLE_INTERVAL with the monitor's CPU
    time); the rate is taken between the first and the last sample that saw
    the counters move, so boot and the guest's ARP do not count. A bound
    socket that nobody reads takes the datagrams (no ICMP errors back), so no
    receiving thread competes with the monitor for the CPU."""
    def traffic(pid_of, alive) -> Traffic:
        t = Traffic()
        s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        s.bind((HOST_IP, PORT))
        samples = []
        try:
            pid = pid_of()
            deadline = time.monotonic() + READY_TIMEOUT + SECONDS + 10
            while alive() and time.monotonic() < deadline:
                now = time.perf_counter()
                counters = tap_counters(pid)
                cpu = cpu_seconds(pid)
                if counters is None or cpu is None:
                    break
                samples.append((now, counters[0], counters[1], cpu))
                time.sleep(SAMPLE_INTERVAL)
        finally:
            s.close()
        moving = [i for i in range(1, len(samples)) if samples[i][1] > samples[i - 1][1]]
        if len(moving) < 3:
            raise BenchError("the TAP's counters did not move: the guest sent nothing?")
        # From the end of the first interval that moved to the end of the last
        # one: whole intervals of steady sending only.
        a, b = samples[moving[0]], samples[moving[-1]]
        t.seconds = b[0] - a[0]
        t.packets = b[1] - a[1]
        t.bytes = (b[2] - a[2]) - t.packets * FRAME_OVERHEAD
        t.cpu = b[3] - a[3]
        return t
    return traffic


def rx_source(ns: Namespace, size: int):
    """Once the guest answers pings, send it datagrams of `size` bytes as fast
    as this thread can for the run, then STOP."""
    def traffic(pid_of, alive) -> Traffic:
        t = Traffic()
        icmp = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            _wait_answering(icmp, os.getpid() & 0xFFFF, alive)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            s.connect((GUEST_IP, PORT))
            payload = bytearray(size)
            send = s.send
            pid = pid_of()
            cpu0 = cpu_seconds(pid) or 0.0
            t0 = time.perf_counter()
            # The guest counts for SECONDS from the first datagram it sees; CPU is
            # read a little before that, while the monitor surely still runs.
            cpu_at = t0 + SECONDS - 0.1
            end = t0 + SECONDS + 0.2
            seq = 0
            cpu1 = None
            while True:
                for _ in range(256):
                    struct.pack_into("<Q", payload, 0, seq)
                    try:
                        send(payload)
                    except OSError:
                        pass            # a full queue: dropped, as on a wire
                    seq += 1
                now = time.perf_counter()
                if cpu1 is None and now >= cpu_at:
                    cpu1 = cpu_seconds(pid)
                    t.seconds = now - t0
                    t.packets = seq
                if now >= end:
                    break
            if cpu1 is None:
                raise BenchError("the monitor was gone before the end of the run")
            t.cpu = cpu1 - cpu0
            for _ in range(3):
                time.sleep(0.02)
                with contextlib.suppress(OSError):
                    send(b"STOP")
        finally:
            s.close()
            icmp.close()
        return t
    return traffic


def pinger(ns: Namespace):
    def traffic(pid_of, alive) -> Traffic:
        t = Traffic()
        icmp = ns.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        ident = (os.getpid() + 1) & 0xFFFF
        try:
            _wait_answering(icmp, ident, alive)
            for seq in range(1000, 1000 + PINGS):
                rtt = _ping_once(icmp, ident, seq & 0xFFFF, 1.0)
                if rtt is None:
                    raise BenchError(f"echo {seq - 1000} of {PINGS} got no reply within 1 s")
                t.rtts.append(rtt)
            u = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with contextlib.closing(u):
                u.sendto(b"STOP", (GUEST_IP, ECHO_PORT))
        finally:
            icmp.close()
        return t
    return traffic


# The benchmark. ------------------------------------------------------------------------------
def _alternate(setup: Setup, runs: int, one):
    """`runs` runs per monitor, interleaved, after one warm-up run of each."""
    results: dict[str, list] = {m.name: [] for m in setup.monitors}
    for i in range(1 + runs):
        order = setup.monitors if i % 2 == 0 else tuple(reversed(setup.monitors))
        for monitor in order:
            r = one(monitor)
            if i:
                results[monitor.name].append(r)
    return results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    addr = f"{GUEST_IP}/{PREFIX}"
    with Namespace() as ns:
        for size in SIZES:
            guest = Guest("netbench", (("dir", "tx"), ("ip", addr), ("peer", HOST_IP),
                                       ("port", PORT), ("size", size), ("seconds", SECONDS)))
            res = _alternate(setup, runs, lambda m, g=guest: run_with_traffic(
                m, g, setup, ns, tx_sink(ns)))
            pps = {m: median(t.packets / t.seconds for _v, t in rs) for m, rs in res.items()}
            mbs = {m: median(t.bytes / t.seconds / MB for _v, t in rs) for m, rs in res.items()}
            cpu = {m: median(t.cpu / t.packets * 1e6 for _v, t in rs) for m, rs in res.items()}
            sent = {m: median(v.number("pps") for v, _t in rs) for m, rs in res.items()}
            note(f"tx {size} B: the guests sent {sent['kvmm']:.0f} (kvmm) and "
                 f"{sent['qemu']:.0f} (qemu) datagrams/s by their own count")
            yield figure(f"net.tx.{size}.pps", pps["kvmm"], pps["qemu"], "packets/s", 0)
            yield figure(f"net.tx.{size}.mbs", mbs["kvmm"], mbs["qemu"], "MB/s", 2)
            yield figure(f"net.tx.{size}.cpu_per_mpkt", cpu["kvmm"], cpu["qemu"], "s")
        for size in SIZES:
            guest = Guest("netbench", (("dir", "rx"), ("ip", addr), ("port", PORT),
                                       ("size", size), ("seconds", SECONDS),
                                       ("wait", int(READY_TIMEOUT))))
            res = _alternate(setup, runs, lambda m, g=guest, n=size: run_with_traffic(
                m, g, setup, ns, rx_source(ns, n)))
            pps = {m: median(v.number("pps") for v, _t in rs) for m, rs in res.items()}
            mbs = {m: median(v.number("bytes") / v.number("us") for v, _t in rs)
                   for m, rs in res.items()}
            # CPU per delivered datagram: CPU rate over the sending window / guest pps
            cpu = {m: median(t.cpu / t.seconds / max(v.number("pps"), 1) * 1e6
                             for v, t in rs) for m, rs in res.items()}
            offered = {m: median(t.packets / t.seconds for _v, t in rs) for m, rs in res.items()}
            note(f"rx {size} B: the host offered {offered['kvmm']:.0f} (kvmm) and "
                 f"{offered['qemu']:.0f} (qemu) datagrams/s")
            yield figure(f"net.rx.{size}.pps", pps["kvmm"], pps["qemu"], "packets/s", 0)
            yield figure(f"net.rx.{size}.mbs", mbs["kvmm"], mbs["qemu"], "MB/s", 2)
            yield figure(f"net.rx.{size}.cpu_per_mpkt", cpu["kvmm"], cpu["qemu"], "s")
        guest = Guest("netecho", (("ip", addr), ("port", ECHO_PORT), ("seconds", 60)))
        res = _alternate(setup, runs, lambda m: run_with_traffic(
            m, guest, setup, ns, pinger(ns)))
        rtts = {m: [x for _v, t in rs for x in t.rtts] for m, rs in res.items()}
        yield figure("net.ping.rtt_median", median(rtts["kvmm"]) * US,
                     median(rtts["qemu"]) * US, "us", 1)
        yield figure("net.ping.rtt_p90", _percentile(rtts["kvmm"], 0.9) * US,
                     _percentile(rtts["qemu"], 0.9) * US, "us", 1)
