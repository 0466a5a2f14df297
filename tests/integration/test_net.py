"""virtio-net end to end: real guests (the project's guest kernel, modes netecho,
netbench and hostile-net) on TAP interfaces, the host talking to them.

Every test makes its own network namespaces (kvmm-t<pid>-<n>) with its own
TAP/bridge devices and addresses in 10.200.0.0/16, runs the monitor inside one
(`ip netns exec NS python -m kvmm run ...`), sends traffic only inside them,
and deletes them afterwards (deleting a namespace destroys its TAPs and
bridges). Needs root and /dev/net/tun besides /dev/kvm; skipped with the
reason otherwise (a failure with KVMM_REQUIRE_KVM=1, as in CI).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import queue
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.conftest import (REPO, Run, api, iops_alone_and_beside, on_cpus, stop,
                                        require, second_guest_iops, two_cpus,
                                        wait_for_socket)

pytestmark = pytest.mark.kvm

CLONE_NEWNET = 0x40000000        # include/uapi/linux/sched.h
ECHO_PORT = 7
BOOT_TIMEOUT = 20.0              # s, from spawn to the guest's "ready" line
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def _net_problem() -> str | None:
    if os.geteuid() != 0:
        return "network tests need root (network namespaces and TAP devices)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun): network tests need TAP devices"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2, iputils-ping; ci/setup installs them)"
    return None


@pytest.fixture(scope="module")
def net_ok(guest_kernel):
    require(_net_problem())
    return guest_kernel


def ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        raise AssertionError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


class Namespaces:
    """Creates namespaces on demand; deletes them (and so their devices) at the end."""

    def __init__(self):
        self.names: list[str] = []

    def new(self) -> str:
        name = f"kvmm-t{os.getpid()}-{next(_counter)}"
        ip("netns", "add", name)
        self.names.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.names = []


@pytest.fixture
def netns(net_ok):
    ns = Namespaces()
    yield ns
    ns.close()


def tap(ns: str, name: str, addr: str | None = None, master: str | None = None) -> None:
    ip("-n", ns, "tuntap", "add", "dev", name, "mode", "tap")
    if addr:
        ip("-n", ns, "addr", "add", addr, "dev", name)
    if master:
        ip("-n", ns, "link", "set", name, "master", master)
    ip("-n", ns, "link", "set", name, "up")


@contextlib.contextmanager
def in_netns(ns: str):
    """Run the body with this thread in namespace `ns` (sockets made there stay there)."""
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


def udp_socket(ns: str, addr: str, timeout: float = 2.0, port: int = 0) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(timeout)
    return s


def ping(ns: str, addr: str, count: int = 5) -> tuple[int, str]:
    """(replies, output) of `ping -c count` from namespace `ns`."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2",
                           "-W", "2", addr], capture_output=True, text=True, timeout=60)
    m = re.search(r"(\d+) received", proc.stdout)
    return (int(m.group(1)) if m else 0), proc.stdout + proc.stderr


class Guest:
    """`python -m kvmm run` inside a namespace, its console read line by line."""

    def __init__(self, ns: str, kernel: str, cmdline: str, nets: list[str],
                 timeout: float = 60.0, extra: tuple = ()):
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "kvmm", "run",
                "--kernel", kernel, "--console", "stdout", "--timeout", f"{timeout:g}",
                "--cmdline", cmdline, *extra]
        for n in nets:
            argv += ["--net", n]
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=REPO, text=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, text: str, timeout: float = BOOT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} within {timeout:g} s:\n{self.transcript()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                self.stderr = self.proc.stderr.read()
                raise AssertionError(f"the monitor exited ({self.proc.returncode}) before "
                                     f"{text!r}:\n{self.transcript()}")
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = 60.0) -> Run:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the monitor did not exit within {timeout:g} s:\n"
                                 f"{self.transcript()}") from None
        self._reader.join(5)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        self.stderr = self.proc.stderr.read()
        return Run(subprocess.CompletedProcess(self.argv, self.proc.returncode,
                                               "\n".join(self.lines) + "\n", self.stderr))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def transcript(self) -> str:
        return "\n".join(self.lines[-30:]) + (f"\nstderr:\n{self.stderr}" if self.stderr else "")


@pytest.fixture
def guests():
    started: list[Guest] = []

    def start(*args, **kw) -> Guest:
        g = Guest(*args, **kw)
        started.append(g)
        return g
    yield start
    for g in started:               # before the namespaces go (the fixture order)
        g.kill()


def stop_echo(ns: str, local: str, guest_ip: str) -> None:
    s = udp_socket(ns, local)
    try:
        s.sendto(b"STOP", (guest_ip, ECHO_PORT))
    finally:
        s.close()


def verdict_of(run: Run) -> dict:
    v = run.verdict()
    assert v["result"] == "PASS", run
    assert run.status == 0, run
    return v


# The tests. -----------------------------------------------------------------------------------
def test_host_pings_the_guest(netns, guests, net_ok):
    ns = netns.new()
    tap(ns, "kt0", "10.200.1.1/24")
    g = guests(ns, net_ok, f"mode=netecho ip=10.200.1.2/24 port={ECHO_PORT} seconds=60",
               ["tap=kt0,mac=02:00:0a:c8:01:02"])
    line = g.wait_for("netecho ready")
    assert "mac=02:00:0a:c8:01:02" in "\n".join(g.lines), g.transcript()
    assert "link=up" in "\n".join(g.lines), line
    replies, out = ping(ns, "10.200.1.2", 5)
    assert replies == 5, out
    stop_echo(ns, "10.200.1.1", "10.200.1.2")
    v = verdict_of(g.finish())
    assert int(v["pings"]) >= 5 and v["stop"] == "datagram"


def test_udp_echo_ten_thousand_mixed_sizes(netns, guests, net_ok):
    """10,000 datagrams of 1..1472 bytes through the guest's echo, each byte-exact
    and in order; at most WINDOW in flight; bounded in time."""
    count, window, limit_s = 10_000, 32, 120.0
    ns = netns.new()
    tap(ns, "kt0", "10.200.2.1/24")
    g = guests(ns, net_ok, f"mode=netecho ip=10.200.2.2/24 port={ECHO_PORT} seconds=150",
               ["tap=kt0"], timeout=170)
    g.wait_for("netecho ready")
    rng = random.Random(20240601)
    sizes = [1, 1472, 2, 1471] + [rng.randint(1, 1472) for _ in range(count - 4)]
    payloads = [bytes(rng.getrandbits(8) for _ in range(min(n, 16))) * (n // 16 + 1)
                for n in sizes]
    payloads = [p[:n] for p, n in zip(payloads, sizes, strict=True)]
    s = udp_socket(ns, "10.200.2.1", timeout=5.0)
    dest = ("10.200.2.2", ECHO_PORT)
    t0 = time.monotonic()
    sent = received = 0
    try:
        while received < count:
            while sent < count and sent - received < window:
                s.sendto(payloads[sent], dest)
                sent += 1
            try:
                data, src = s.recvfrom(2048)
            except TimeoutError:
                raise AssertionError(f"no echo for 5 s after {received} of {count} "
                                     f"(sent {sent})\n{g.transcript()}") from None
            assert src == dest
            assert data == payloads[received], (
                f"echo {received} differs: sent {len(payloads[received])} bytes, "
                f"got {len(data)}")
            received += 1
            assert time.monotonic() - t0 < limit_s, f"only {received} echoes in {limit_s} s"
        elapsed = time.monotonic() - t0
        s.sendto(b"STOP", dest)
    finally:
        s.close()
    v = verdict_of(g.finish())
    assert int(v["echoed"]) == count + 1 and int(v["dropped"]) == 0, v
    print(f"{count} datagrams echoed in {elapsed:.2f} s")


def test_two_guests_on_one_bridge(netns, guests, net_ok):
    """A bridge in a namespace with two guests' TAPs: the host pings both, and
    guest A (netbench tx) sends to guest B (netecho), which echoes back to A."""
    ns = netns.new()
    ip("-n", ns, "link", "add", "kbr0", "type", "bridge")
    ip("-n", ns, "addr", "add", "10.200.3.1/24", "dev", "kbr0")
    ip("-n", ns, "link", "set", "kbr0", "up")
    tap(ns, "kta", master="kbr0")
    tap(ns, "ktb", master="kbr0")
    b = guests(ns, net_ok, f"mode=netecho ip=10.200.3.3/24 port={ECHO_PORT} seconds=60",
               ["tap=ktb"])
    b.wait_for("netecho ready")
    replies, out = ping(ns, "10.200.3.3", 3)
    assert replies == 3, out
    a = guests(ns, net_ok, f"mode=netbench dir=tx ip=10.200.3.2/24 peer=10.200.3.3 "
               f"port={ECHO_PORT} size=64 seconds=3", ["tap=kta"])
    a.wait_for("netbench ready")          # A resolved B with ARP through the bridge
    # A answers while it floods; B echoes that flood back into A's TAP, whose
    # queue (txqueuelen) is full now and then: the kernel drops a request there.
    replies, out = ping(ns, "10.200.3.2", 5)
    assert replies >= 1, out
    va = verdict_of(a.finish())
    # A's closing "STOP" datagrams stop B, unless B's TAP queue was full of A's
    # flood when they came (the kernel drops there): then the host's does.
    stop_echo(ns, "10.200.3.1", "10.200.3.3")
    vb = verdict_of(b.finish())
    assert vb["stop"] == "datagram", vb
    # B echoed A's datagrams (more than the host's STOP alone)
    assert int(va["packets"]) > 0 and int(vb["echoed"]) > 1, (va, vb)


def test_one_guest_two_nics_in_two_namespaces(netns, guests, net_ok):
    """NIC 0 in namespace A, NIC 1 in namespace B (its TAP moved there after the
    monitor opened it): the guest answers on both, with its own MACs."""
    ns_a, ns_b = netns.new(), netns.new()
    tap(ns_a, "kt0", "10.200.4.1/24")
    ip("-n", ns_a, "tuntap", "add", "dev", "kt1", "mode", "tap")
    g = guests(ns_a, net_ok, f"mode=netecho ip=10.200.4.2/24 ip1=10.200.5.2/24 "
               f"port={ECHO_PORT} seconds=60", ["tap=kt0", "tap=kt1,id=second"])
    g.wait_for("netecho ready")
    ip("-n", ns_a, "link", "set", "kt1", "netns", ns_b)
    ip("-n", ns_b, "addr", "add", "10.200.5.1/24", "dev", "kt1")
    ip("-n", ns_b, "link", "set", "kt1", "up")
    for ns, addr in ((ns_a, "10.200.4.2"), (ns_b, "10.200.5.2")):
        replies, out = ping(ns, addr, 3)
        assert replies == 3, (ns, out)
    # UDP on the second NIC too
    s = udp_socket(ns_b, "10.200.5.1")
    try:
        s.sendto(b"hello second nic", ("10.200.5.2", ECHO_PORT))
        assert s.recvfrom(2048)[0] == b"hello second nic"
    finally:
        s.close()
    macs = re.findall(r"net\d .*mac=([0-9a-f:]{17})", "\n".join(g.lines))
    assert len(macs) == 2 and macs[0] != macs[1], g.transcript()
    stop_echo(ns_a, "10.200.4.1", "10.200.4.2")
    v = verdict_of(g.finish())
    assert int(v["pings"]) >= 6


def test_hostile_net_leaves_the_monitor_working(netns, guests, net_ok):
    """Malformed transmit chains and ring states: the monitor stays up, the guest
    resets the device where it must, and the host can still ping it."""
    ns = netns.new()
    tap(ns, "kt0", "10.200.6.1/24")
    g = guests(ns, net_ok, "mode=hostile-net ip=10.200.6.2/24 peer=10.200.6.1 linger=4 "
               "timeout_ms=2000", ["tap=kt0"], timeout=90)
    g.wait_for("hostile-net nic=", timeout=30)
    # linger: after the cases the guest answers pings for a while
    deadline = time.monotonic() + 40
    replies = 0
    while time.monotonic() < deadline and g.proc.poll() is None:
        if any(line.startswith("RESULT ") for line in g.lines):
            break
        replies, out = ping(ns, "10.200.6.2", 2)
        if replies:
            break
    run = g.finish(60)
    v = verdict_of(run)
    # the chains the device can return are dropped and completed; broken ring
    # states get DEVICE_NEEDS_RESET (the guest resets and goes on)
    assert int(v["cases"]) > 0 and int(v["completed"]) > 0 and int(v["reset"]) > 0, v
    assert v["peer"] == "ok", v
    assert replies > 0, f"no ping answered after the hostile cases\n{run.stdout}"
    assert "Traceback" not in run.stderr, run.stderr


def test_monitor_creates_and_brings_up_a_missing_tap(netns, guests, net_ok):
    ns = netns.new()
    g = guests(ns, net_ok, f"mode=netecho ip=10.200.7.2/24 port={ECHO_PORT} seconds=60",
               ["tap=knew0"])
    g.wait_for("netecho ready")
    link = ip("-n", ns, "link", "show", "knew0")
    assert ",UP" in link or "<UP" in link, link
    ip("-n", ns, "addr", "add", "10.200.7.1/24", "dev", "knew0")
    replies, out = ping(ns, "10.200.7.2", 2)
    assert replies == 2, out
    stop_echo(ns, "10.200.7.1", "10.200.7.2")
    verdict_of(g.finish())
    # kvmm's TAP was not persistent: it went with the monitor
    assert subprocess.run(["ip", "-n", ns, "link", "show", "knew0"],
                          capture_output=True).returncode != 0


def _bucket(rate: int) -> str:
    """--rate-limit JSON: `rate` bytes/s as a bucket refilled every 100 ms."""
    return json.dumps({"bandwidth": {"size": rate // 10, "refill_time": 100}})


def _received_rate(g: Guest, rx_sock: socket.socket, frame_len: int) -> float:
    """Ethernet bytes per second of the datagrams a `netbench dir=tx` guest sends
    to `rx_sock` (from the first to the last, until its "STOP"); closes the
    socket and checks the guest's verdict. Bounded to 15 s."""
    try:
        g.wait_for("netbench ready")
        got, first, last = 0, None, None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                data = rx_sock.recv(2048)
            except TimeoutError:
                if g.proc.poll() is not None:
                    break
                continue
            if data == b"STOP":
                break
            now = time.monotonic()
            if first is None:
                first = now
            else:
                got += 1
                last = now
    finally:
        rx_sock.close()
    verdict_of(g.finish())
    assert got and last > first, "no datagrams arrived"
    return got * frame_len / (last - first)


def test_rate_limits_per_direction(netns, guests, net_ok, tmp_path):
    """--rate-limit net:ID:tx and net:ID:rx hold each direction near its rate;
    frames over it wait (in the ring, in the TAP) and are counted as throttled."""
    rate, size = 200_000, 1000               # bytes/s (Ethernet), UDP payload bytes
    frame_len = size + 42                    # + Ethernet, IPv4 and UDP headers
    ns = netns.new()
    tap(ns, "kt0", "10.200.8.1/24")
    # Guest -> host, throttled by its tx limiter.
    rx_sock = udp_socket(ns, "10.200.8.1", timeout=0.5, port=9000)
    stats = tmp_path / "tx-stats.json"
    g = guests(ns, net_ok, "mode=netbench dir=tx ip=10.200.8.2/24 peer=10.200.8.1 port=9000 "
               f"size={size} seconds=3", ["tap=kt0,id=lan"],
               extra=("--rate-limit", f"net:lan:tx={_bucket(rate)}", "--stats-file",
                      str(stats)))
    measured = _received_rate(g, rx_sock, frame_len)
    assert 0.7 * rate < measured < 1.3 * rate, f"{measured:.0f} B/s against a limit of {rate}"
    dev = json.loads(stats.read_text())["devices"]["virtio-net:lan"]
    assert dev["tx_throttled"] > 0 and dev["tx_dropped"] == 0, dev

    # Host -> guest, throttled by its rx limiter: the guest counts what arrives.
    g = guests(ns, net_ok, "mode=netbench dir=rx ip=10.200.8.2/24 port=9000 seconds=3 "
               "wait=20", ["tap=kt0,id=lan"],
               extra=("--rate-limit", f"net:lan:rx={_bucket(rate)}"))
    g.wait_for("netbench ready")
    s = udp_socket(ns, "10.200.8.1")
    try:
        payload = bytes(size)
        end = time.monotonic() + 4
        while time.monotonic() < end and g.proc.poll() is None:
            s.sendto(payload, ("10.200.8.2", 9000))    # ~5x the limit
            time.sleep(0.001)
        s.sendto(b"STOP", ("10.200.8.2", 9000))
    finally:
        s.close()
    v = verdict_of(g.finish())
    received = int(v["packets"]) * frame_len / (int(v["us"]) / 1e6)
    assert 0.7 * rate < received < 1.3 * rate, f"{received:.0f} B/s against a limit of {rate}"
    print(f"limit {rate} B/s: tx {measured:.0f} B/s, rx {received:.0f} B/s")


@pytest.mark.parametrize("case", ["busy", "not-a-tap"])
def test_tap_open_failures_exit_2_before_boot(netns, net_ok, case):
    ns = netns.new()
    holder = None
    if case == "busy":
        tap(ns, "kbusy0")
        name = "kbusy0"
        from kvmm.virtio.net.tap import open_tap
        with in_netns(ns):
            holder = open_tap(name)           # the TAP's one queue is taken
        words = "already in use"
    else:
        ip("-n", ns, "link", "add", "kbr9", "type", "bridge")
        name = "kbr9"
        words = "not a TAP device"
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "kvmm", "run",
                               "--kernel", net_ok, "--console", "stdout", "--cmdline",
                               "mode=hello", "--net", f"tap={name}"], cwd=REPO,
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    finally:
        if holder is not None:
            holder.close()
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and f"TAP {name}" in lines[0], proc.stderr
    assert "kvmm-guest" not in proc.stdout                 # nothing booted


def test_a_guest_flooding_disk_and_nic_does_not_slow_another(netns, net_ok, tmp_path):
    """Guest A, throttled (disk 10 MiB/s, NIC 1 MB/s, a tenth of a CPU), floods
    its disk and its NIC at once; guest B's unthrottled disk I/O keeps at least
    90 % of what it gets with A paused (each on its own host CPU, see
    two_cpus). A's monitor runs outside the namespace
    (its cgroup needs the host's /sys); its TAP is moved into the namespace
    before the guest sends anything, so all traffic stays there."""
    ns = netns.new()
    name = f"kvf{os.getpid() % 100000}"
    ip("tuntap", "add", "dev", name, "mode", "tap")
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for p in (a, b):
        with open(p, "wb") as f:
            f.truncate(64 << 20)
    sock = str(tmp_path / "flood.sock")
    b_cpu, flood_cpu = two_cpus()
    flood = subprocess.Popen(
        [sys.executable, "-m", "kvmm", "run", "--kernel", net_ok, "--timeout", "300",
         "--cmdline", "mode=flood peer=10.200.9.1 port=9000 size=1400 seconds=300 "
         "ip=10.200.9.2/24", "--net", f"tap={name},id=lan",
         "--drive", f"path={a},id=disk,bw=10M,iops=1000", "--api-sock", sock,
         "--rate-limit", f"net:lan:tx={_bucket(1_000_000)}", "--cpu-quota", "0.1"],
        cwd=REPO, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, preexec_fn=on_cpus({flood_cpu}))
    sink = None
    try:
        wait_for_socket(sock, flood)             # kvmm has opened the TAP by now
        ip("link", "set", name, "netns", ns)
        ip("-n", ns, "addr", "add", "10.200.9.1/24", "dev", name)
        ip("-n", ns, "link", "set", name, "up")
        sink = udp_socket(ns, "10.200.9.1")      # datagrams to port 9000 are dropped
        alone, beside = iops_alone_and_beside(
            lambda: second_guest_iops(str(b), b_cpu, "--kernel", net_ok), sock)
        limits = api(sock, "GET", "/kvmm/stats")["limits"]
        stop(flood)
        out, err = flood.communicate(timeout=60)
    finally:
        if sink is not None:
            sink.close()
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
    assert flood.returncode == 0, (out, err)
    disk, tx = limits["drive:disk"], limits["net:lan:tx"]
    assert disk["ops"] > 100 and disk["throttled_count"] > 0, disk
    assert tx["ops"] > 1000 and tx["throttled_count"] > 0, tx
    assert beside >= 0.9 * alone, (alone, beside)


def test_net_shorthand_limit(netns, guests, net_ok):
    """`--net tap=...,tx_bw=200K` limits the guest's transmit rate like the JSON form."""
    rate, size = 200 * 1024, 1000
    frame_len = size + 42
    ns = netns.new()
    tap(ns, "ks0", "10.200.10.1/24")
    rx_sock = udp_socket(ns, "10.200.10.1", timeout=0.5, port=9000)
    g = guests(ns, net_ok, "mode=netbench dir=tx ip=10.200.10.2/24 peer=10.200.10.1 port=9000 "
               f"size={size} seconds=3", ["tap=ks0,id=lan,tx_bw=200K"])
    measured = _received_rate(g, rx_sock, frame_len)
    assert 0.9 * rate < measured < 1.1 * rate, f"{measured:.0f} B/s against a limit of {rate}"
