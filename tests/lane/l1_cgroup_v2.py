"""kvmm's cgroup v2 path on a real kernel: run inside the lane's L1 only, by
ci/lane/cgroup_v2.py (with tests/integration/test_quota.py's cgroup tests), on
the pure cgroup v2 hierarchy ci/lane/l1-init.sh mounts (L1 boots with
cgroup_no_v1=all). Not collected on the host: the name does not match test_*.py.
"""
import os
import subprocess
import sys
import time

import pytest

from kvmm.quota.cgroup import detect, parse_cpu_max, parse_max
from tests.integration.conftest import REPO, api, stop, wait_for_socket

pytestmark = pytest.mark.kvm
CGROUP = "/sys/fs/cgroup"
MiB = 1 << 20
GUEST_MEM, OVERHEAD, QUOTA = 64 * MiB, 32 * MiB, 0.5
CPU_WINDOW = 2.0        # seconds of a spinning guest under the quota


def cpu_stat(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(f"{path}/cpu.stat").splitlines())}


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def leftovers() -> list[str]:
    return sorted(d for d in os.listdir(CGROUP) if d.startswith("kvmm-"))


def test_the_hierarchy_is_pure_v2():
    mounts = [line.split() for line in read("/proc/self/mounts").splitlines()]
    at = [m[2] for m in mounts if m[1] == CGROUP]
    assert at == ["cgroup2"], f"{CGROUP} is mounted as {at or 'nothing'}, not cgroup2 alone"
    v1 = [m[1] for m in mounts if m[2] == "cgroup"]
    assert not v1, f"v1 cgroup hierarchies are mounted: {v1}"
    assert "cgroup_no_v1=all" in read("/proc/cmdline").split(), read("/proc/cmdline")
    offered = read(f"{CGROUP}/cgroup.controllers").split()
    assert {"memory", "cpu"} <= set(offered), f"{CGROUP}/cgroup.controllers: {offered}"
    assert read("/proc/self/cgroup") == "0::/", read("/proc/self/cgroup")
    assert detect() == "v2"
    assert not leftovers(), f"cgroups left from an earlier run: {leftovers()}"


def test_the_monitor_sits_in_a_v2_cgroup_with_its_limits(guest_kernel, tmp_path):
    """A spinning guest with --mem-overhead-limit and --cpu-quota: while it runs,
    the monitor (and only it) is in /kvmm-<pid>-<pid> with memory.max = guest
    RAM + allowance, memory.swap.max 0 and cpu.max "50000 100000"; the stats
    report the same numbers; the cgroup's CPU use over a window stays within
    the quota and it is throttled; after SIGTERM the cgroup is gone."""
    sock = str(tmp_path / "api.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmm", "run", "--vcpus", "2", "--mem", f"{GUEST_MEM >> 20}M",
         "--mem-overhead-limit", f"{OVERHEAD >> 20}M", "--cpu-quota", str(QUOTA),
         "--api-sock", sock, "--cmdline", "mode=smp iters=100000000000", "--timeout", "120"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for_socket(sock, proc, 60)
        deadline = time.monotonic() + 60        # the API is up before the guest is built
        while "cgroup" not in api(sock, "GET", "/kvmm/stats").get("memory", {}):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"the stats never showed a cgroup: {proc.poll()}"
            time.sleep(0.1)
        own = read(f"/proc/{proc.pid}/cgroup")
        assert own == f"0::/kvmm-{proc.pid}-{proc.pid}", f"the monitor's cgroup: {own}"
        path = CGROUP + own[3:]
        assert read(f"{path}/cgroup.procs").split() == [str(proc.pid)], \
            f"{path}/cgroup.procs: {read(f'{path}/cgroup.procs').split()}"
        assert parse_max(read(f"{path}/memory.max")) == GUEST_MEM + OVERHEAD, \
            f"{path}/memory.max: {read(f'{path}/memory.max')}"
        if os.path.exists(f"{path}/memory.swap.max"):
            assert read(f"{path}/memory.swap.max") == "0", read(f"{path}/memory.swap.max")
        assert parse_cpu_max(read(f"{path}/cpu.max")) == (int(QUOTA * 100_000), 100_000), \
            f"{path}/cpu.max: {read(f'{path}/cpu.max')}"
        enabled = read(f"{CGROUP}/cgroup.subtree_control").split()
        assert {"memory", "cpu"} <= set(enabled), f"root cgroup.subtree_control: {enabled}"
        cg = api(sock, "GET", "/kvmm/stats")["memory"]["cgroup"]
        assert cg["version"] == "v2" and cg["path"] == path, cg
        assert cg["limit"] == GUEST_MEM + OVERHEAD and 0 < cg["usage"] <= cg["limit"], cg
        assert isinstance(cg["peak"], int) and cg["peak"] <= cg["limit"], cg
        # The quota, measured by the cgroup's own clock (cpu.stat) over a window
        # while both vCPUs spin: the process's CPU time would include kvmm's
        # start-up before it entered the cgroup.
        before, t0 = cpu_stat(path), time.monotonic()
        time.sleep(CPU_WINDOW)
        after, t1 = cpu_stat(path), time.monotonic()
        stop(proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, (proc.returncode, out[-2000:], err[-2000:])
    used = (after["usage_usec"] - before["usage_usec"]) / 1e6 / (t1 - t0)
    assert 0.5 * QUOTA <= used <= QUOTA * 1.15, \
        f"the cgroup used {used:.2f} CPUs over {t1 - t0:.1f} s, quota {QUOTA} " \
        f"({before} -> {after})"
    assert after["nr_throttled"] > before["nr_throttled"], \
        f"cpu.stat shows no throttling: {before} -> {after}"
    assert not os.path.exists(path), f"{path} is still there after the monitor exited"
    assert read("/proc/self/cgroup") == "0::/"
    assert not leftovers(), f"cgroups left behind: {leftovers()}"
