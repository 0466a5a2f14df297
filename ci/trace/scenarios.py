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
NS = "kvmm-trace"


def traced(name: str, argv: list[str], *, signal_after=None, background=False, ns=None):
    cmd = TRACE + ["--out", os.path.join(RUNS, f"{name}.json")]
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
    import signal
    subprocess.run(["pkill", "-TERM", "-f", "--", f"--api-sock {sock}"], check=False)
    out, _ = p.communicate(timeout=120)
    print("api-firecracker:", out.strip().splitlines()[-1] if out.strip() else "")
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


SCENARIOS = {"simple": simple, "blk": blk, "api-run": run_api, "firecracker": firecracker,
             "net": net}


def main(names: list[str]) -> int:
    os.makedirs(RUNS, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(SCENARIOS):
            SCENARIOS[name](tmp)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "scenarios"
    sys.exit(main(sys.argv[1:]))
