"""Trace the monitor through every scenario the seccomp allowlists must cover
(ci/trace/trace.py on each), writing ci/trace/runs/NAME.json.

    .venv/bin/python ci/trace/scenarios.py [NAME...]

Needs /dev/kvm and root (a network namespace for the net scenarios).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
PY = os.path.join(REPO, ".venv", "bin", "python")
TRACE = [PY, os.path.join(REPO, "ci", "trace", "trace.py")]
RUNS = os.path.join(REPO, "ci", "trace", "runs")
# Runs that record a call no role may make, kept out of runs/ (which
# tests/unit/test_seccomp.py checks) until the code that makes it is fixed: a
# TAP's stats call socket.if_nametoindex after the seal (docs/seal.md, "Known gap").
PENDING: set[str] = set()     # runs to keep out of the allowlist check while a gap is open
PENDING_DIR = os.path.join(REPO, "ci", "trace", "pending")
NS = f"kvmm-trace-{os.getpid()}"


def traced(name: str, argv: list[str], *, signal_after=None, background=False, ns=None):
    cmd = TRACE + ["--out", os.path.join(PENDING_DIR if name in PENDING else RUNS,
                                         f"{name}.json")]
    if signal_after:
        cmd += ["--signal-after", str(signal_after[0]), signal_after[1]]
    monitor = ([PY, "-m", "kvmm"] + argv)
    if ns:
        monitor = ["ip", "netns", "exec", ns] + monitor
    cmd += ["--"] + monitor
    if background:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    print(f"{name}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return r


def monitor_pid(p: subprocess.Popen) -> int | None:
    """The monitor a background trace.py started (its only child)."""
    try:
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def stop(p: subprocess.Popen, name: str, sig=None, wait: float = 120) -> None:
    """Send `sig` (SIGTERM) to the traced monitor, by its pid, and wait for the trace."""
    import signal
    pid = monitor_pid(p)
    if pid is not None:
        try:
            os.kill(pid, sig or signal.SIGTERM)
        except ProcessLookupError:
            pass
    out, _ = p.communicate(timeout=wait)
    print(f"{name}:", out.strip().splitlines()[-1] if out.strip() else "")


def image(tmp: str, name: str, size: int) -> str:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def api(sock: str, method: str, path: str, body=None):
    from kvmm.api.client import request
    return request(sock, method, path, body, 20)


def wait_sock(sock: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)


def simple(tmp: str) -> None:
    traced("hello", ["run", "--cmdline", "mode=hello", "--timeout", "60"])
    traced("smp", ["run", "--vcpus", "2", "--cmdline", "mode=smp iters=1000", "--timeout", "60"])
    traced("timer-irq", ["run", "--cmdline", "mode=timer", "--timeout", "60"])
    traced("irq", ["run", "--cmdline", "mode=irq", "--timeout", "60"])
    traced("timeout", ["run", "--cmdline", "mode=timer ticks=100000", "--timeout", "2"])
    traced("fault", ["run", "--cmdline", "mode=fault", "--timeout", "60"])
    traced("exception", ["run", "--cmdline", "mode=exception kind=gp", "--timeout", "60"])
    traced("reset", ["run", "--cmdline", "mode=reset", "--timeout", "60"])
    traced("sigterm", ["run", "--cmdline", "mode=timer ticks=100000", "--timeout", "60"],
           signal_after=(1.5, "SIGTERM"))
    traced("sigint", ["run", "--cmdline", "mode=timer ticks=100000", "--timeout", "60"],
           signal_after=(1.5, "SIGINT"))


def blk(tmp: str) -> None:
    a = image(tmp, "a.img", 8 << 20)
    b = image(tmp, "b.img", 4 << 20)
    ro = image(tmp, "ro.img", 2 << 20)
    stats = os.path.join(tmp, "stats.json")
    traced("blktest", ["run", "--mem", "128M", "--drive", f"path={a},serial=S0", "--drive",
                       f"path={ro},ro", "--cmdline", "mode=blktest", "--timeout", "120",
                       "--stats-file", stats])
    traced("hostile-blk", ["run", "--drive", f"path={b}", "--cmdline", "mode=hostile-blk",
                           "--timeout", "120"])
    traced("blk-throttled", ["run", "--drive", f"path={a},bw=2M,iops=200", "--drive-group",
                             "bw=4M", "--cmdline", "mode=blkbench op=write seconds=1",
                             "--timeout", "60"])
    traced("blkmulti", ["run", "--drive", f"path={a}", "--drive", f"path={b}", "--cmdline",
                        "mode=blkmulti seconds=1", "--timeout", "60"])


def run_api(tmp: str) -> None:
    """kvmm run --api-sock: every run-time call, then SendCtrlAltDel (a reset)."""
    a = image(tmp, "api-a.img", 8 << 20)
    new = image(tmp, "api-new.img", 16 << 20)
    sock = os.path.join(tmp, "run.sock")
    p = traced("api-run", ["run", "--drive", f"path={a},id=d0,bw=50M", "--api-sock", sock,
                           "--cmdline", "mode=blkbench op=read seconds=6", "--timeout", "60"],
               background=True)
    wait_sock(sock)
    time.sleep(1.0)
    calls = [("GET", "/", None), ("GET", "/version", None), ("GET", "/vm/config", None),
             ("GET", "/machine-config", None), ("GET", "/kvmm/stats", None),
             ("PATCH", "/vm", {"state": "Paused"}), ("GET", "/kvmm/stats", None),
             ("PATCH", "/vm", {"state": "Resumed"}),
             ("PATCH", "/drives/d0", {"drive_id": "d0", "path_on_host": new}),
             ("PATCH", "/drives/d0", {"drive_id": "d0", "rate_limiter": {
                 "bandwidth": {"size": 1000000, "refill_time": 100}}}),
             ("PATCH", "/kvmm/rate-limiters/drives", {"ops": {"size": 100, "refill_time": 100}}),
             ("PATCH", "/drives/nope", {"drive_id": "nope"}),
             ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}),
             ("GET", "/nothing", None), ("PUT", "/mmds", {"a": {"b": 1}}),
             ("PATCH", "/mmds", {"a": {"c": 2}}), ("GET", "/mmds", None),
             ("PUT", "/actions", {"action_type": "FlushMetrics"}),
             ("PUT", "/actions", {"action_type": "SendCtrlAltDel"})]
    for method, path, body in calls:
        try:
            print("  ", method, path, api(sock, method, path, body)[0])
        except OSError as e:
            print("  ", method, path, e)
    out, _ = p.communicate(timeout=120)
    print("api-run:", out.strip().splitlines()[-1])


def firecracker(tmp: str) -> None:
    """kvmm firecracker: the whole API sequence, metrics and a log, then SIGTERM."""
    from kvmm.guest_image import default_kernel
    a = image(tmp, "fc-a.img", 8 << 20)
    new = image(tmp, "fc-new.img", 8 << 20)
    sock = os.path.join(tmp, "fc.sock")
    log = os.path.join(tmp, "fc.log")
    metrics = os.path.join(tmp, "fc.metrics")
    p = traced("api-firecracker", ["firecracker", "--api-sock", sock, "--log-path", log,
                                   "--level", "Debug", "--boot-timer"],
               background=True)
    wait_sock(sock)
    seq = [("GET", "/", None),
           ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64}),
           ("PUT", "/boot-source", {"kernel_image_path": default_kernel(),
                                    "boot_args": "mode=blkbench op=write seconds=4"}),
           ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": a,
                                    "is_root_device": False, "is_read_only": False}),
           ("PUT", "/metrics", {"metrics_path": metrics}),
           ("PUT", "/mmds", {"x": 1}),
           ("PUT", "/actions", {"action_type": "InstanceStart"}),
           ("GET", "/", None), ("GET", "/vm/config", None),
           ("PATCH", "/vm", {"state": "Paused"}), ("PATCH", "/vm", {"state": "Resumed"}),
           ("PATCH", "/drives/root", {"drive_id": "root", "path_on_host": new}),
           ("PATCH", "/drives/root", {"drive_id": "root", "rate_limiter": {
               "ops": {"size": 1000, "refill_time": 100}}}),
           ("PUT", "/actions", {"action_type": "FlushMetrics"}),
           ("GET", "/kvmm/stats", None), ("PATCH", "/mmds", {"y": 2}), ("GET", "/mmds", None),
           ("PUT", "/drives/late", {"drive_id": "late", "path_on_host": a,
                                    "is_root_device": False, "is_read_only": False})]
    for method, path, body in seq:
        try:
            print("  ", method, path, api(sock, method, path, body)[0])
        except OSError as e:
            print("  ", method, path, e)
    time.sleep(1)
    stop(p, "api-firecracker")
    # --config-file: built before the API serves; stopped by SIGTERM
    cfg = os.path.join(tmp, "fc.json")
    import json
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": default_kernel(),
                                   "boot_args": "mode=netecho seconds=0"},
                   "drives": [{"drive_id": "d", "path_on_host": a, "is_root_device": False,
                               "is_read_only": True}]}, f)
    traced("fc-config", ["firecracker", "--api-sock", os.path.join(tmp, "fc2.sock"),
                         "--config-file", cfg], signal_after=(2, "SIGTERM"))


def _in_threads(n: int, fn) -> list:
    """Run fn() in n threads released together; their results (or exceptions)."""
    barrier = threading.Barrier(n)
    out: list = []
    lock = threading.Lock()

    def one() -> None:
        try:
            barrier.wait(30)
            r = fn()
        except Exception as e:          # noqa: BLE001  (recorded, printed)
            r = e
        with lock:
            out.append(r)
    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _raw(sock: str, data: bytes, seconds: float = 10.0) -> bytes:
    """Send `data` on a fresh connection; read until the monitor closes."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(seconds)
        s.connect(sock)
        s.sendall(data)
        answer = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                return answer
            if not chunk:
                return answer
            answer += chunk


MALFORMED = [b"GARBAGE\r\n\r\n", bytes(range(256)) + b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
             b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
             b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
             b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
             b"PUT /mmds HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n"
             b"0\r\n\r\n",
             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"]


def api_live(tmp: str) -> None:
    """kvmm firecracker with a busy guest, fed what tests/integration/test_api_live.py
    sends: bad fields, bytes that are not HTTP, oversized bodies (Content-Length and
    chunked), stalled clients, 100 clients at once, a second monitor probing the live
    socket; then SendCtrlAltDel (the guest resets: the monitor stops)."""
    import json
    import socket
    from kvmm.guest_image import default_kernel
    a = image(tmp, "live-a.img", 4 << 20)
    sock = os.path.join(tmp, "live.sock")
    p = traced("api-live", ["firecracker", "--api-sock", sock, "--id", "busy"],
               background=True)
    wait_sock(sock)
    for method, path, body in [
            ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}),
            ("PUT", "/boot-source", {"kernel_image_path": default_kernel(), "boot_args":
                                     "mode=blkbench op=read pattern=rand qd=4 seconds=600"}),
            ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": a,
                                       "is_root_device": False, "is_read_only": False}),
            ("PUT", "/actions", {"action_type": "InstanceStart"})]:
        print("  ", method, path, api(sock, method, path, body)[0])
    time.sleep(1.0)
    for method, path, body in [
            ("PATCH", "/vm", {"state": 1}), ("PUT", "/actions", {"action_type": ["x"]}),
            ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": 7}),
            ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "is_read_only": True}),
            ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {
                "ops": {"size": 2 ** 64, "refill_time": 100}}}),
            ("PATCH", "/kvmm/rate-limiters/drive:rootfs", {"iops": {"size": 1,
                                                                     "refill_time": 1}}),
            ("PUT", "/mmds", {"small": 1})]:
        print("  ", method, path, api(sock, method, path, body)[0])
    for data in MALFORMED:
        print("   malformed:", _raw(sock, data)[:12])
    body = json.dumps({"big": "x" * 51200}).encode()
    head = b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                      for i in range(0, len(body), 4096))
    for data in (head + b"Content-Length: %d\r\n\r\n" % len(body) + body,
                 head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"):
        print("   oversized:", _raw(sock, data)[:12])
    for partial in (b"GET /machine-con",
                    b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"h\": "):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as staller:
            staller.connect(sock)
            staller.sendall(partial)
            time.sleep(0.2)
            for _ in range(3):
                print("   while stalled:", api(sock, "GET", "/machine-config")[0])

    def client():
        return [api(sock, "GET", path)[0] for path in ("/", "/machine-config")]
    answers = _in_threads(100, client)
    print("   100 clients:", sum(a == [200, 200] for a in answers), "answered")
    # a second monitor on the live socket: it connects, is accepted, and closes
    second = subprocess.run([PY, "-m", "kvmm", "firecracker", "--api-sock", sock, "--id", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    print("   second monitor:", second.returncode, second.stderr.strip()[:80])
    print("  ", "GET /", api(sock, "GET", "/")[0])
    print("   SendCtrlAltDel:",
          api(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})[0])
    time.sleep(1.0)                 # the busy guest ignores it: SIGTERM stops the monitor
    stop(p, "api-live")


def quota(tmp: str) -> None:
    """--mem-overhead-limit and --cpu-quota: the monitor's own cgroup, read for the
    stats and removed at exit."""
    stats = os.path.join(tmp, "quota-stats.json")
    traced("quota", ["run", "--vcpus", "2", "--mem-overhead-limit", "256M", "--cpu-quota",
                     "0.5", "--cmdline", "mode=smp iters=1000", "--timeout", "60",
                     "--stats-file", stats])
    traced("quota-timeout", ["run", "--mem-overhead-limit", "256M", "--cpu-quota", "0.2",
                             "--cmdline", "mode=timer ticks=100000", "--timeout", "2"])


def ns_sh(*cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", NS, *cmd], check=False, capture_output=True)


def net(tmp: str) -> None:
    """netecho in a namespace: ARP, ping, UDP both ways, a rate limit."""
    subprocess.run(["ip", "netns", "add", NS], check=False, capture_output=True)
    try:
        for name, extra in (("netecho", []), ("net-throttled", [
                "--rate-limit", 'net:lan:tx={"bandwidth":{"size":20000,"refill_time":100}}',
                "--rate-limit", 'net:lan:rx={"bandwidth":{"size":20000,"refill_time":100}}'])):
            p = traced(name, ["run", "--net", "tap=ktr0,id=lan", "--cmdline",
                              "mode=netecho seconds=20 ip=10.201.0.2/24", "--timeout", "60",
                              *extra], background=True, ns=NS)
            for _ in range(200):
                r = subprocess.run(["ip", "netns", "exec", NS, "ip", "link", "show", "ktr0"],
                                   capture_output=True)
                if r.returncode == 0:
                    break
                time.sleep(0.1)
            time.sleep(1.0)
            ns_sh("ip", "addr", "add", "10.201.0.1/24", "dev", "ktr0")
            ns_sh("ip", "link", "set", "ktr0", "up")
            ns_sh("ping", "-c", "3", "-i", "0.2", "10.201.0.2")
            code = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                    "s.settimeout(1)\n"
                    "for n in (10,1400,60000//100):\n s.sendto(b'x'*n,('10.201.0.2',7))\n"
                    " try: s.recv(65536)\n except OSError: pass\n"
                    "s.sendto(b'STOP',('10.201.0.2',7))")
            ns_sh(PY, "-c", code)
            out, _ = p.communicate(timeout=120)
            print(f"{name}:", out.strip().splitlines()[-1] if out.strip() else "")
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, capture_output=True)


class Fifo:
    """A named pipe read by a thread (Kata opens it O_RDONLY|O_NONBLOCK first)."""

    def __init__(self, path: str, create: bool = True):
        import select
        if create:
            os.mkfifo(path, 0o600)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.data = b""
        self.done = threading.Event()

        def read() -> None:
            while True:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                chunk = os.read(self.fd, 65536) if ready else b""
                if chunk:
                    self.data += chunk
                elif self.done.is_set():
                    return
                elif ready:
                    time.sleep(0.02)
        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def close(self) -> int:
        self.done.set()
        self.thread.join(5)
        os.close(self.fd)
        return len(self.data.splitlines())


def _ns_tap(name: str, addr: str | None = None) -> None:
    ns_sh("ip", "tuntap", "add", "dev", name, "mode", "tap")
    if addr:
        ns_sh("ip", "addr", "add", addr, "dev", name)
    ns_sh("ip", "link", "set", name, "up")


def contract(tmp: str) -> None:
    """tests/integration/test_firecracker_contract.py's sequences, in a namespace:
    Kata (--config-file with logger and metrics FIFOs, a drive pool, a TAP with empty
    rate limiters, PATCH of a pool drive, SIGTERM), flintlock (--no-api, --metadata,
    --boot-timer, regular log and metrics files, SIGHUP) and the Go SDK (logger and
    metrics FIFOs over the API, the whole configuration, MMDS, SendCtrlAltDel,
    SIGTERM)."""
    import json
    from kvmm.guest_image import default_kernel
    kernel = default_kernel()
    subprocess.run(["ip", "netns", "add", NS], check=False, capture_output=True)
    try:
        # Kata
        _ns_tap("ktrkata0")
        d = os.path.join(tmp, "kata")
        os.mkdir(d)
        rootfs = image(d, "rootfs.img", 2 << 20)
        pool = []
        for i in range(8):
            path = os.path.join(d, f"drive_{i}")
            open(path, "wb").close()
            pool.append(path)
        container = image(d, "container.img", 2 << 20)
        hot = image(d, "hotplug.img", 4 << 20)
        logs, metrics = Fifo(os.path.join(d, "logs.fifo")), Fifo(os.path.join(d, "m.fifo"))
        config = {
            "boot-source": {"kernel_image_path": kernel, "boot_args":
                            "mode=blkwrite disk=9 seed=9 sectors=1024 console=ttyS0"},
            "drives": ([{"drive_id": "rootfs", "is_read_only": True, "is_root_device": False,
                         "path_on_host": rootfs}]
                       + [{"drive_id": f"drive_{i}", "is_read_only": False,
                           "is_root_device": False, "path_on_host": p}
                          for i, p in enumerate(pool)]
                       + [{"drive_id": "container0", "is_read_only": False,
                           "is_root_device": False, "path_on_host": container}]),
            "logger": {"level": "Debug", "log_path": logs.path},
            "machine-config": {"mem_size_mib": 128, "smt": False, "vcpu_count": 1},
            "metrics": {"metrics_path": metrics.path},
            "network-interfaces": [{"guest_mac": "02:42:ac:11:00:02", "host_dev_name":
                                    "ktrkata0", "iface_id": "eth0", "rx_rate_limiter": {},
                                    "tx_rate_limiter": {}}]}
        cfg = os.path.join(d, "fcConfig.json")
        with open(cfg, "w") as f:
            json.dump(config, f, indent="\t")
        sock = os.path.join(d, "firecracker.socket")
        p = traced("kata", ["firecracker", "--api-sock", sock, "--config-file", cfg],
                   background=True, ns=NS)
        wait_sock(sock)
        time.sleep(2.0)
        for method, path, body in [
                ("GET", "/", None),
                ("PATCH", "/drives/drive_0", {"drive_id": "drive_0", "path_on_host": hot}),
                ("GET", "/vm/config", None)]:
            print("  ", method, path, api(sock, method, path, body)[0])
        time.sleep(0.5)
        stop(p, "kata")
        print("   kata FIFOs: log lines", logs.close(), "metrics lines", metrics.close())

        # flintlock
        _ns_tap("ktrflint0", "10.201.21.1/24")
        d = os.path.join(tmp, "flintlock")
        os.mkdir(d)
        root = image(d, "root.img", 8 << 20)
        log_path, metrics_path = os.path.join(d, "fc.log"), os.path.join(d, "fc.metrics")
        for path in (log_path, metrics_path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        config = {
            "drives": [{"drive_id": "root", "path_on_host": root, "is_root_device": True,
                        "is_read_only": False, "cache_type": "Unsafe"}],
            "boot-source": {"kernel_image_path": kernel, "boot_args":
                            "console=ttyS0 reboot=k panic=1 pci=off mode=netecho "
                            "ip=10.201.21.2/24 seconds=0"},
            "logger": {"log_path": log_path, "level": "Debug", "show_level": True,
                       "show_log_origin": True},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": True,
                               "track_dirty_pages": False},
            "metrics": {"metrics_path": metrics_path},
            "mmds-config": {"version": "V1", "network_interfaces": ["eth0"]},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "ktrflint0",
                                    "guest_mac": "02:00:0a:c8:15:02"}]}
        cfg = os.path.join(d, "firecracker.cfg")
        with open(cfg, "w") as f:
            json.dump(config, f)
        meta = os.path.join(d, "metadata.json")
        with open(meta, "w") as f:
            json.dump({"latest": {"meta-data": "aW5zdGFuY2VfaWQ6IG12bTA="}}, f)
        p = traced("flintlock", ["firecracker", "--id", "01HF9Z2C6Q8ZJ7X4VQ0ZJ5N8KD",
                                 "--boot-timer", "--no-api", "--config-file", cfg,
                                 "--metadata", meta], background=True, ns=NS)
        time.sleep(3.0)
        ns_sh("ping", "-c", "3", "-i", "0.2", "10.201.21.2")
        import signal
        stop(p, "flintlock", signal.SIGHUP)

        # Go SDK
        _ns_tap("ktrsdk0", "10.201.22.1/24")
        d = os.path.join(tmp, "sdk")
        os.mkdir(d)
        disk = image(d, "rootfs.ext4", 8 << 20)
        sock = os.path.join(d, "firecracker.sock")
        p = traced("go-sdk", ["firecracker", "--api-sock", sock, "--id",
                              "6c1e2a4e-0000-4000-8000-000000000001"], background=True, ns=NS)
        wait_sock(sock)
        log_fifo, metrics_fifo = os.path.join(d, "log.fifo"), os.path.join(d, "metrics.fifo")
        os.mkfifo(log_fifo, 0o700)
        os.mkfifo(metrics_fifo, 0o700)
        seq1 = [("GET", "/machine-config", None),
                ("PUT", "/logger", {"log_path": log_fifo, "level": "Debug",
                                    "show_level": True, "show_log_origin": False}),
                ("PUT", "/metrics", {"metrics_path": metrics_fifo})]
        for method, path, body in seq1:
            print("  ", method, path, api(sock, method, path, body)[0])
        logs, metrics = Fifo(log_fifo, create=False), Fifo(metrics_fifo, create=False)
        meta = {"latest": {"meta-data": {"instance-id": "x"}}}
        for method, path, body in [
                ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 128, "smt": False}),
                ("GET", "/machine-config", None),
                ("PUT", "/boot-source", {"kernel_image_path": kernel, "boot_args":
                                         "console=ttyS0 reboot=k panic=1 pci=off "
                                         "mode=netecho ip=10.201.22.2/24 seconds=0"}),
                ("PUT", "/drives/1", {"drive_id": "1", "path_on_host": disk,
                                      "is_root_device": True, "is_read_only": False}),
                ("PUT", "/network-interfaces/1", {"iface_id": "1", "host_dev_name": "ktrsdk0",
                                                  "guest_mac": "06:00:0a:c8:16:02"}),
                ("PUT", "/mmds/config", {"network_interfaces": ["1"], "version": "V2",
                                         "ipv4_address": "169.254.169.254"}),
                ("PUT", "/mmds", meta),
                ("PUT", "/actions", {"action_type": "InstanceStart"})]:
            print("  ", method, path, api(sock, method, path, body)[0])
        time.sleep(2.0)
        ns_sh("ping", "-c", "3", "-i", "0.2", "10.201.22.2")
        for method, path, body in [
                ("GET", "/mmds", None), ("GET", "/", None),
                ("PATCH", "/drives/1", {"drive_id": "1", "rate_limiter": {"bandwidth": {
                    "size": 1048576, "one_time_burst": 0, "refill_time": 100}}}),
                ("GET", "/vm/config", None), ("GET", "/kvmm/stats", None),
                ("PUT", "/actions", {"action_type": "FlushMetrics"}),
                ("PUT", "/actions", {"action_type": "SendCtrlAltDel"})]:
            print("  ", method, path, api(sock, method, path, body)[0])
        time.sleep(0.5)
        stop(p, "go-sdk")
        print("   go-sdk FIFOs: log lines", logs.close(), "metrics lines", metrics.close())
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, capture_output=True)


def net_directions(tmp: str) -> None:
    """tests/integration/test_net.py's rate limits per direction: netbench tx under a tx
    limit with --stats-file, then rx under an rx limit."""
    subprocess.run(["ip", "netns", "add", NS], check=False, capture_output=True)
    try:
        _ns_tap("ktrdir0", "10.201.8.1/24")
        bucket = '{"bandwidth":{"size":20000,"refill_time":100}}'
        traced("net-tx-limited", ["run", "--net", "tap=ktrdir0,id=lan", "--cmdline",
                                  "mode=netbench dir=tx ip=10.201.8.2/24 peer=10.201.8.1 "
                                  "port=9000 size=1000 seconds=2", "--timeout", "60",
                                  "--rate-limit", f"net:lan:tx={bucket}", "--stats-file",
                                  os.path.join(tmp, "tx-stats.json")], ns=NS)
        p = traced("net-rx-limited", ["run", "--net", "tap=ktrdir0,id=lan", "--cmdline",
                                      "mode=netbench dir=rx ip=10.201.8.2/24 port=9000 "
                                      "seconds=2 wait=20", "--timeout", "60", "--rate-limit",
                                      f"net:lan:rx={bucket}"], background=True, ns=NS)
        time.sleep(3.0)
        code = ("import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "end=time.monotonic()+3\n"
                "while time.monotonic()<end:\n s.sendto(bytes(1000),('10.201.8.2',9000))\n"
                " time.sleep(0.001)\n"
                "s.sendto(b'STOP',('10.201.8.2',9000))")
        ns_sh(PY, "-c", code)
        out, _ = p.communicate(timeout=120)
        print("net-rx-limited:", out.strip().splitlines()[-1] if out.strip() else "")
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, capture_output=True)


SCENARIOS = {"simple": simple, "blk": blk, "api-run": run_api, "firecracker": firecracker,
             "api-live": api_live, "quota": quota, "net": net,
             "net-directions": net_directions, "contract": contract}


def main(names: list[str]) -> int:
    os.makedirs(RUNS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(SCENARIOS):
            SCENARIOS[name](tmp)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "scenarios"
    sys.exit(main(sys.argv[1:]))
