"""Quotas that hold against a guest driving its devices and CPUs as hard as it can."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import (REPO, api, iops_alone_and_beside, kvmm, on_cpus, stop,
                                        require, second_guest_iops, two_cpus,
                                        wait_for_socket)

pytestmark = pytest.mark.kvm
MiB = 1 << 20


def disk(tmp_path, name="d.img", size=64 << 20):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def rate(verdict) -> float:
    """Bytes per second as the guest measured it."""
    return int(verdict["bytes"]) / int(verdict["us"]) * 1e6


def test_bandwidth_limit_holds_within_5_percent(guest_kernel, tmp_path):
    img = disk(tmp_path)
    free = kvmm("run", "--mem", "128M", "--drive", f"path={img}", "--cmdline",
                "mode=blkbench op=read bs=65536 qd=4 seconds=1", "--timeout", "60",
                check_status=0).verdict()
    limited = kvmm("run", "--mem", "128M", "--drive", f"path={img},bw=10M", "--cmdline",
                   "mode=blkbench op=read bs=65536 qd=4 seconds=4", "--timeout", "60",
                   check_status=0).verdict()
    assert rate(free) > 5 * 10 * MiB                       # well above without a limit
    assert abs(rate(limited) / (10 * MiB) - 1) <= 0.05, limited


def test_iops_limit_holds_within_5_percent(guest_kernel, tmp_path):
    img = disk(tmp_path)
    v = kvmm("run", "--mem", "128M", "--drive", f"path={img},iops=500", "--cmdline",
             "mode=blkbench op=read pattern=rand bs=4096 qd=4 seconds=4", "--timeout", "60",
             check_status=0).verdict()
    assert abs(int(v["iops"]) / 500 - 1) <= 0.05, v


def test_write_limit_and_burst(guest_kernel, tmp_path):
    img = disk(tmp_path)
    v = kvmm("run", "--mem", "128M", "--drive", f"path={img},bw=8M,bw_burst=8M", "--cmdline",
             "mode=blkbench op=write bs=65536 qd=4 seconds=3", "--timeout", "60",
             check_status=0).verdict()
    # 3 s at 8 MiB/s, plus the first 0.1 s bucket, plus the 8 MiB one-time burst
    expected = 8 * MiB * 3 + 0.8 * MiB + 8 * MiB
    assert abs(int(v["bytes"]) / expected - 1) <= 0.06, v


def test_group_limit_caps_two_drives_together(guest_kernel, tmp_path):
    a, b = disk(tmp_path, "a.img"), disk(tmp_path, "b.img")
    v = kvmm("run", "--mem", "128M", "--drive", f"path={a}", "--drive", f"path={b}",
             "--drive-group", "iops=400", "--cmdline", "mode=blkmulti qd=2 seconds=4",
             "--timeout", "60", check_status=0).verdict()
    assert abs(int(v["iops"]) / 400 - 1) <= 0.05, v
    assert int(v["ops0"]) > 300 and int(v["ops1"]) > 300    # both drives get a share


def test_changing_the_limit_mid_run_changes_the_guests_rate(guest_kernel, tmp_path):
    img = disk(tmp_path)
    sock = str(tmp_path / "api.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvmm", "run", "--mem", "128M", "--drive",
         f"path={img},id=d0,bw=4M", "--api-sock", sock, "--cmdline",
         "mode=blkbench op=read bs=65536 qd=4 seconds=4", "--timeout", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        time.sleep(2)
        before = _stats(sock)["limits"]["drive:d0"]["bytes"]
        patch = subprocess.run(
            [sys.executable, "-m", "kvmm", "limit", "--api-sock", sock, "drive:d0",
             json.dumps({"bandwidth": {"size": 1677722, "refill_time": 100}})],
            cwd=REPO, capture_output=True, text=True, timeout=20)
        assert patch.returncode == 0, patch
        t0 = time.monotonic()
        time.sleep(1)
        after = _stats(sock)["limits"]["drive:d0"]
        host_rate = (after["bytes"] - before) / (time.monotonic() - t0 + 0.0)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, (out, err)
    assert after["bandwidth"]["size"] == 1677722
    assert host_rate > 10 * MiB                               # 16 MiB/s after the patch
    verdict = next(line for line in out.splitlines() if line.startswith("RESULT"))
    v = dict(w.split("=", 1) for w in verdict.split()[3:] if "=" in w)
    # ~2 s at 4 MiB/s and ~2 s at 16 MiB/s: the guest's average lies between
    assert 6 * MiB < rate(v) < 14 * MiB, verdict


def _stats(sock: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "kvmm", "stats", "--api-sock", sock], cwd=REPO,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def test_throttled_flood_does_not_slow_another_guest(guest_kernel, tmp_path):
    """Guest A writes to its throttled disk as fast as it may; guest B's
    unthrottled reads keep at least 90 % of what they get with A paused
    (each on its own host CPU, see two_cpus)."""
    a, b = disk(tmp_path, "a.img"), disk(tmp_path, "b.img")
    sock = str(tmp_path / "flood.sock")
    b_cpu, flood_cpu = two_cpus()
    flood = subprocess.Popen(
        [sys.executable, "-m", "kvmm", "run", "--mem", "128M", "--drive",
         f"path={a},id=d0,bw=10M,iops=1000", "--api-sock", sock, "--cmdline",
         "mode=blkbench op=write bs=65536 qd=8 seconds=300", "--timeout", "300"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=on_cpus({flood_cpu}))
    try:
        wait_for_socket(sock, flood)
        alone, beside = iops_alone_and_beside(lambda: second_guest_iops(b, b_cpu), sock)
        flooded = api(sock, "GET", "/kvmm/stats")["limits"]["drive:d0"]
        stop(flood)
        out, err = flood.communicate(timeout=60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait(10)
    assert flood.returncode == 0, (out, err)
    assert flooded["throttled_count"] > 0 and flooded["bytes"] > 10 * MiB, flooded
    assert beside >= 0.9 * alone, (alone, beside)


def test_monitor_memory_stays_inside_its_cgroup(guest_kernel, tmp_path):
    require(None if os.geteuid() == 0 else "cgroup limits need root")
    stats_file = tmp_path / "stats.json"
    allowance = 48 * MiB
    r = kvmm("run", "--mem", "256M", "--mem-overhead-limit", "48M", "--stats-file",
             str(stats_file), "--cmdline", "mode=mem", "--timeout", "120", check_status=0)
    assert r.verdict()["result"] == "PASS"
    stats = json.loads(stats_file.read_text())
    cg = stats["memory"]["cgroup"]
    assert cg["limit"] == (256 * MiB) + allowance
    assert cg["peak"] <= cg["limit"]
    assert stats["memory"]["guest_ram_touched"] > 250 * MiB     # the guest did touch it all


def test_device_hammering_stays_inside_the_cgroup(guest_kernel, tmp_path):
    require(None if os.geteuid() == 0 else "cgroup limits need root")
    img = disk(tmp_path, size=256 << 20)
    stats_file = tmp_path / "stats.json"
    r = kvmm("run", "--mem", "64M", "--mem-overhead-limit", "32M", "--stats-file",
             str(stats_file), "--drive", f"path={img}", "--cmdline",
             "mode=blkbench op=write bs=1048576 qd=4 seconds=2", "--timeout", "60",
             check_status=0)
    assert r.verdict()["result"] == "PASS"
    cg = json.loads(stats_file.read_text())["memory"]["cgroup"]
    assert cg["peak"] <= cg["limit"] == 96 * MiB


def test_cpu_quota_caps_a_spinning_guest(guest_kernel, tmp_path):
    require(None if os.geteuid() == 0 else "cgroup limits need root")
    stats_file = tmp_path / "stats.json"
    r = kvmm("run", "--vcpus", "2", "--cpu-quota", "0.5", "--stats-file", str(stats_file),
             "--cmdline", "mode=smp iters=100000000000", "--timeout", "3")
    assert r.status == 124, r                 # still spinning when the timeout stops it
    cpu = json.loads(stats_file.read_text())["cpu"]
    cg = cpu["cgroup"]
    # CPU time inside the cgroup where the hierarchy counts it (v2 cpu.stat, v1
    # cpuacct beside cpu); else the process's own, start-up included.
    used = cg["seconds"] / cg["wall"] if "seconds" in cg else cpu["seconds"] / cpu["wall"]
    assert used <= 0.5 * 1.15, cpu
    assert cg["nr_throttled"] > 0, cg


def test_vcpu_pinning(guest_kernel, tmp_path):
    stats_file = tmp_path / "stats.json"
    cpus = sorted(os.sched_getaffinity(0))
    pin = [cpus[-1], cpus[0]]
    kvmm("run", "--vcpus", "2", "--cpu-pin", f"{pin[0]},{pin[1]}", "--stats-file",
         str(stats_file), "--cmdline", "mode=smp iters=100000", "--timeout", "30",
         check_status=0)
    affinity = json.loads(stats_file.read_text())["cpu"]["affinity"]
    assert affinity == {"vcpu0": [pin[0]], "vcpu1": [pin[1]]}


def one_line_error(r, needle):
    assert r.status == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r


@pytest.mark.parametrize("args,needle", [
    (["--drive", "path={img},bw=-5"], "bw="),
    (["--drive", "path={img},iops=lots"], "iops="),
    (["--drive", "path={img},bw=10Q"], "bw="),
    (["--drive", "path={img},bw_burst=5M"], "burst"),
    (["--drive", "path={img}", "--drive-group", "speed=5"], "--drive-group"),
    (["--drive", "path={img},id=d0", "--rate-limit",
      'drive:d0={"bandwidth": {"size": 100, "refill_time": 0}}'], "refill_time"),
    (["--drive", "path={img},id=d0", "--rate-limit",
      'drive:d0={"bandwidth": {"size": -1, "refill_time": 10}}'], "size"),
    (["--drive", "path={img},id=d0", "--rate-limit", "drive:d0=not json"], "JSON"),
    (["--drive", "path={img},id=d0", "--rate-limit",
      'drive:nope={"ops": {"size": 10, "refill_time": 100}}'], "drive:nope"),
    (["--rate-limit", 'drive:x={"ops": {"size": 10, "refill_time": 100}}'], "has no 'drive:x'"),
    (["--cpu-quota", "-1"], "--cpu-quota"),
    (["--cpu-pin", "0,zero"], "--cpu-pin"),
    (["--vcpus", "2", "--cpu-pin", "0"], "--cpu-pin"),
    (["--mem-overhead-limit", "lots"], "--mem-overhead-limit"),
])
def test_bad_limits(guest_kernel, tmp_path, args, needle):
    img = disk(tmp_path, size=1 << 20)
    one_line_error(kvmm("run", *[a.replace("{img}", img) for a in args]), needle)
