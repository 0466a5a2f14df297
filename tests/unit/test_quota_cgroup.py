"""Per-guest cgroups (kvmm.quota.cgroup) on a fake cgroupfs that keeps the
kernel's rules (tests/unit/fake_cgroupfs.py), v2 and v1; and the fake's rules
themselves, each against what the kernel does."""
import errno

import pytest

from kvmm.quota.cgroup import (CPU_PERIOD_US, CgroupError, CgroupFs, GuestCgroup, detect,
                               format_cpu_max, own_cgroups, parse_cpu_max, parse_flat_keyed,
                               parse_max)
from tests.unit.fake_cgroupfs import FakeCgroupKernel

ROOT = "/sys/fs/cgroup"
PID = 4242
MiB = 1 << 20


def v2(own="/", others=(), controllers=("cpu", "memory", "pids"), **kw) -> FakeCgroupKernel:
    """A v2 kernel with the monitor (PID) in `own` and `others` beside it."""
    k = FakeCgroupKernel("v2", controllers, self_pid=PID, **kw)
    k.mkcgroup(own)
    k.spawn(PID, own)
    for pid in others:
        k.spawn(pid, own)
    return k


def delegate(k: FakeCgroupKernel, path: str, controllers: str) -> None:
    """Enable `controllers` in the subtree_control of `path` and every ancestor
    (as systemd does for a slice), straight on the fake's state."""
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts) + 1):
        node = k.cgroup("/" + "/".join(parts[:depth]))
        node.subtree_control = controllers.split()


def guest(k, memory=64 * MiB, cpu=None, name="g") -> GuestCgroup:
    return GuestCgroup(name, memory, cpu, root=ROOT, fs=k, pid=PID)


# Parsing. ------------------------------------------------------------------------
def test_parsers():
    assert parse_max("max\n") is None and parse_max("1048576\n") == MiB
    assert parse_cpu_max("max 100000\n") == (None, 100_000)
    assert parse_cpu_max("50000 100000") == (50_000, 100_000)
    assert format_cpu_max(150_000) == "150000 100000" and format_cpu_max(None) == "max 100000"
    assert parse_flat_keyed("low 0\nmax 7\noom_kill 1\n") == {"low": 0, "max": 7, "oom_kill": 1}


def test_own_cgroups_parses_both_layouts(tmp_path):
    p = tmp_path / "c"
    p.write_text("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user\n")
    assert own_cgroups(str(p)) == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/user"}


def test_detect(tmp_path):
    assert detect(ROOT, fs=v2()) == "v2"
    assert detect(ROOT, fs=FakeCgroupKernel("v1")) == "v1"
    assert detect(ROOT, fs=v2(controllers=("pids",))) == ""     # neither memory nor cpu
    empty = tmp_path / "none"
    empty.mkdir()
    proc = tmp_path / "p"
    proc.write_text("0::/\n")
    assert detect(str(empty), str(proc)) == ""


def test_real_fs_never_creates_a_control_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        CgroupFs().write(str(tmp_path / "memory.max"), "1")
    assert not (tmp_path / "memory.max").exists()


# v2. -----------------------------------------------------------------------------
def test_v2_at_the_root_as_in_the_lanes_l1():
    k = v2("/")
    cg = guest(k, 100 * MiB, cpu=1.5)
    leaf = f"/kvmm-{PID}-g"
    assert k.where(PID) == leaf and cg.path == f"{ROOT}{leaf}" and cg.placement == "nested"
    assert k.cgroup("/").subtree_control == ["memory", "cpu"]   # the root may hold processes
    assert k.read(f"{ROOT}{leaf}/memory.max") == f"{100 * MiB}\n"
    assert k.read(f"{ROOT}{leaf}/memory.swap.max") == "0\n"
    assert k.read(f"{ROOT}{leaf}/cpu.max") == f"{int(1.5 * CPU_PERIOD_US)} {CPU_PERIOD_US}\n"
    assert cg.limits() == {"memory_max": 100 * MiB, "cpu_max": (150_000, CPU_PERIOD_US)}
    cg.close()
    assert k.where(PID) == "/" and not k.exists(f"{ROOT}{leaf}")
    assert k.cgroup("/").subtree_control == ["memory", "cpu"]   # others may use them now


def test_v2_own_cgroup_gets_a_leaf_before_enabling_controllers():
    """The monitor alone in a delegated cgroup: it moves into a leaf first,
    which empties its cgroup, and only then enables the controllers there."""
    own = "/system.slice/run-u7.scope"
    k = v2(own)
    delegate(k, "/system.slice", "cpu memory pids")
    cg = guest(k, 32 * MiB, cpu=0.5)
    leaf = f"{own}/kvmm-{PID}-g"
    assert k.where(PID) == leaf and cg.placement == "nested"
    assert k.cgroup(own).procs == set() and k.cgroup(own).subtree_control == ["memory", "cpu"]
    ops = [(op, path.rsplit("/", 1)[-1]) for op, path, _ in k.log]
    assert ops.index(("write", "cgroup.procs")) < ops.index(("write", "cgroup.subtree_control"))
    assert k.read(f"{ROOT}{leaf}/cpu.max") == "50000 100000\n"
    cg.close()
    # back home: the controllers it enabled are off again (else it could not return)
    assert k.where(PID) == own and k.cgroup(own).subtree_control == []
    assert not k.cgroup(own).children


def test_v2_beside_other_processes_uses_a_sibling_when_the_parent_hands_controllers_down():
    own = "/user.slice/user-0.slice/session-3.scope"
    k = v2(own, others=(100, 101))
    delegate(k, "/user.slice/user-0.slice", "memory cpu pids")
    cg = guest(k, 48 * MiB, cpu=1.0)
    leaf = f"/user.slice/user-0.slice/kvmm-{PID}-g"
    assert k.where(PID) == leaf and cg.placement == "sibling"
    assert k.cgroup(own).procs == {100, 101}            # nobody else was moved
    assert k.cgroup(own).subtree_control == []
    assert cg.memory_usage()["limit"] == 48 * MiB
    cg.close()
    assert k.where(PID) == own and not k.exists(ROOT + leaf)


def test_v2_beside_other_processes_without_a_delegating_parent_says_what_to_do():
    own = "/user.slice/user-0.slice/session-3.scope"
    k = v2(own, others=(100,))
    delegate(k, "/user.slice/user-0.slice", "memory pids")      # no cpu
    with pytest.raises(CgroupError) as e:
        guest(k, 48 * MiB, cpu=1.0)
    msg = str(e.value)
    assert e.value.errno == errno.EBUSY
    for needle in ("cpu", "holds other processes (100)", "systemd-run --scope -p Delegate=yes",
                   "--cpu-quota"):
        assert needle in msg, msg
    assert k.where(PID) == own and not k.log                  # nothing was touched


def test_v2_controller_missing_in_an_ancestor_is_named():
    own = "/work/job"
    k = v2(own)
    delegate(k, "/work", "cpu")                 # memory stops at the root: not enabled there
    k.cgroup("/").subtree_control = ["cpu"]
    with pytest.raises(CgroupError) as e:
        guest(k, 64 * MiB)
    msg = str(e.value)
    assert f"memory controller is not enabled in {ROOT}/cgroup.subtree_control" in msg, msg
    assert "echo +memory" in msg and "--mem-overhead-limit" in msg, msg
    assert k.where(PID) == own and not k.log


def test_v2_controller_the_kernel_does_not_offer():
    k = v2("/", controllers=("memory", "pids"))
    with pytest.raises(CgroupError, match=r"has no cpu controller.*--cpu-quota"):
        guest(k, None, cpu=1.0)
    assert not k.log


def test_v2_a_process_joining_meanwhile_is_reported_and_undone():
    own = "/svc"
    k = v2(own)
    delegate(k, "/", "cpu memory")
    real_mkdir = k.mkdir

    def mkdir(path):
        real_mkdir(path)
        k.spawn(555, own)                       # someone else starts in our cgroup
    k.mkdir = mkdir
    with pytest.raises(CgroupError, match="a process joined that cgroup meanwhile"):
        guest(k, 64 * MiB)
    assert k.where(PID) == own and not k.cgroup(own).children


def test_v2_failure_midway_is_undone_in_order():
    own = "/svc"
    k = v2(own)
    delegate(k, "/", "cpu memory")
    with pytest.raises(CgroupError, match=r"cannot write '-5' to .*memory.max"):
        guest(k, -5)                              # EINVAL from the kernel
    assert k.where(PID) == own and k.cgroup(own).subtree_control == []
    assert not k.cgroup(own).children


def test_v2_memory_usage_is_numbers():
    k = v2("/")
    cg = guest(k, 64 * MiB)
    leaf = cg.path
    k.set_value(f"{leaf}/memory.current", "1234567\n")
    k.set_value(f"{leaf}/memory.peak", "2345678\n")
    k.set_value(f"{leaf}/memory.events", "low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")
    assert cg.memory_usage() == {"version": "v2", "path": leaf, "usage": 1234567,
                                 "peak": 2345678, "limit": 64 * MiB, "high": None,
                                 "failcnt": 3, "oom_kill": 0}
    cg.close()


def test_v2_without_memory_peak_or_swap_accounting():
    k = v2("/", swap=False, peak=False)              # kernels before 5.19; swapaccount=0
    cg = guest(k, 64 * MiB)
    usage = cg.memory_usage()
    assert usage["peak"] is None and usage["limit"] == 64 * MiB
    cg.close()


def test_v2_cpu_only_has_no_memory_usage():
    k = v2("/")
    cg = guest(k, None, cpu=0.25)
    assert cg.memory_usage() == {} and cg.limits()["cpu_max"] == (25_000, CPU_PERIOD_US)
    assert k.cgroup("/").subtree_control == ["cpu"]
    cg.close()


def test_close_twice_is_harmless():
    k = v2("/svc")
    delegate(k, "/", "cpu memory")
    cg = guest(k)
    cg.close()
    cg.close()
    assert k.where(PID) == "/svc"


def test_cpu_quota_below_the_kernels_minimum():
    with pytest.raises(CgroupError, match="below the kernel's minimum"):
        guest(v2("/"), None, cpu=0.005)


# v1. -----------------------------------------------------------------------------
def v1(memory_path="/sandbox/abc") -> FakeCgroupKernel:
    k = FakeCgroupKernel("v1", self_pid=99)
    k.mkcgroup(memory_path, "memory")
    k.spawn(99, memory_path, "memory")
    return k


def test_v1_memory_and_cpu():
    k = v1()
    cg = GuestCgroup("g", 64 * MiB, cpu_quota=0.25, root=ROOT, fs=k, pid=99)
    assert k.where(99, "memory") == "/sandbox/abc/kvmm-99-g"
    assert k.where(99, "cpu") == "/kvmm-99-g"
    assert k.read(f"{ROOT}/memory/sandbox/abc/kvmm-99-g/memory.limit_in_bytes") == \
        f"{64 * MiB}\n"
    assert k.read(f"{ROOT}/cpu/kvmm-99-g/cpu.cfs_quota_us") == f"{CPU_PERIOD_US // 4}\n"
    assert k.read(f"{ROOT}/cpu/kvmm-99-g/cpu.cfs_period_us") == f"{CPU_PERIOD_US}\n"
    usage = cg.memory_usage()
    assert usage["limit"] == 64 * MiB and usage["version"] == "v1"
    assert all(isinstance(usage[key], int) for key in ("usage", "peak", "limit", "failcnt"))
    cg.close()
    assert k.where(99, "memory") == "/sandbox/abc" and k.where(99, "cpu") == "/"
    assert not k.cgroup("/sandbox/abc", "memory").children and not k.cgroup("/", "cpu").children


def test_v1_has_no_internal_process_rule():
    k = v1("/")
    k.spawn(7, "/", "memory")
    cg = GuestCgroup("g", 64 * MiB, root=ROOT, fs=k, pid=99)
    assert k.cgroup("/", "memory").procs == {7}
    cg.close()


def test_v1_missing_hierarchy_is_a_clear_error():
    k = v1()
    del k.trees["cpu"]
    with pytest.raises(CgroupError, match=r"v1 cpu controller is not mounted.*--cpu-quota"):
        GuestCgroup("g", 64 * MiB, cpu_quota=1.0, root=ROOT, fs=k, pid=99)
    assert k.where(99, "memory") == "/sandbox/abc"                 # the memory part undone
    assert not k.cgroup("/sandbox/abc", "memory").children


def test_no_controller_is_a_clear_error(tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    proc = tmp_path / "p"
    proc.write_text("0::/\n")
    with pytest.raises(CgroupError, match="no cgroup memory or cpu controller"):
        GuestCgroup("g", 1, root=str(empty), proc_cgroup=str(proc))


# The fake's rules, each as the kernel has it. ---------------------------------------
def raises(code, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, e.value


def test_rule_no_internal_processes_when_enabling():
    k = v2("/a")
    delegate(k, "/", "memory cpu")
    raises(errno.EBUSY, k.write, f"{ROOT}/a/cgroup.subtree_control", "+memory")
    k.spawn(PID, "/")
    k.write(f"{ROOT}/a/cgroup.subtree_control", "+memory")          # now empty: allowed
    k.spawn(1, "/")
    k.write(f"{ROOT}/cgroup.subtree_control", "+pids")               # the root is exempt


def test_rule_no_internal_processes_when_joining():
    k = v2("/")
    k.mkcgroup("/a/b")
    delegate(k, "/a", "memory")
    raises(errno.EBUSY, k.write, f"{ROOT}/a/cgroup.procs", str(PID))
    k.write(f"{ROOT}/a/b/cgroup.procs", str(PID))                    # a leaf: fine
    raises(errno.ESRCH, k.write, f"{ROOT}/a/b/cgroup.procs", "31337")


def test_rule_top_down():
    k = v2("/")
    k.mkcgroup("/a/b")
    raises(errno.ENOENT, k.write, f"{ROOT}/a/cgroup.subtree_control", "+memory")
    raises(errno.ENOENT, k.write, f"{ROOT}/cgroup.subtree_control", "+io")   # not offered
    raises(errno.EINVAL, k.write, f"{ROOT}/cgroup.subtree_control", "memory")
    raises(errno.ENOENT, k.write, f"{ROOT}/cgroup.subtree_control", "+cpu +io")
    assert k.cgroup("/").subtree_control == []                       # all or nothing
    k.write(f"{ROOT}/cgroup.subtree_control", "+memory")
    assert k.read(f"{ROOT}/a/cgroup.controllers") == "memory\n"
    k.write(f"{ROOT}/a/cgroup.subtree_control", "+memory")
    raises(errno.EBUSY, k.write, f"{ROOT}/cgroup.subtree_control", "-memory")   # a child uses it


def test_rule_control_files_only_where_the_controller_is():
    k = v2("/")
    k.mkcgroup("/a")
    assert not k.exists(f"{ROOT}/memory.max")                        # never at the root
    raises(errno.ENOENT, k.write, f"{ROOT}/a/memory.max", "1048576")
    raises(errno.ENOENT, k.write, f"{ROOT}/a/cpu.max", "50000 100000")
    k.write(f"{ROOT}/cgroup.subtree_control", "+memory +cpu")
    k.write(f"{ROOT}/a/memory.max", "1048576")
    k.write(f"{ROOT}/cgroup.subtree_control", "-memory")
    assert not k.exists(f"{ROOT}/a/memory.max")
    k.write(f"{ROOT}/cgroup.subtree_control", "+memory")
    assert k.read(f"{ROOT}/a/memory.max") == "max\n"                  # settings went with it
    raises(errno.EACCES, k.write, f"{ROOT}/a/memory.current", "0")


def test_rule_formats():
    k = v2("/")
    k.mkcgroup("/a")
    k.write(f"{ROOT}/cgroup.subtree_control", "+memory +cpu")
    a = f"{ROOT}/a"
    k.write(f"{a}/memory.max", "1000000")
    assert k.read(f"{a}/memory.max") == "999424\n"                    # down to the page
    k.write(f"{a}/memory.high", "64M")
    assert k.read(f"{a}/memory.high") == f"{64 * MiB}\n"
    k.write(f"{a}/memory.max", "max")
    assert k.read(f"{a}/memory.max") == "max\n"
    for bad in ("-1", "lots", "1.5G"):
        raises(errno.EINVAL, k.write, f"{a}/memory.max", bad)
    k.write(f"{a}/cpu.max", "50000 100000")
    assert k.read(f"{a}/cpu.max") == "50000 100000\n"
    k.write(f"{a}/cpu.max", "20000")                                  # keeps the period
    assert k.read(f"{a}/cpu.max") == "20000 100000\n"
    for bad in ("500 100000", "50000 500", "50000 2000000", "half 100000", "1 2 3"):
        raises(errno.EINVAL, k.write, f"{a}/cpu.max", bad)


def test_rule_rmdir_only_when_empty():
    k = v2("/")
    k.mkcgroup("/a/b")
    raises(errno.EBUSY, k.rmdir, f"{ROOT}/a")                         # a child
    k.spawn(7, "/a/b")
    raises(errno.EBUSY, k.rmdir, f"{ROOT}/a/b")                       # a process
    raises(errno.EBUSY, k.rmdir, ROOT)                                # never the root
    k.spawn(7, "/")
    k.rmdir(f"{ROOT}/a/b")
    k.rmdir(f"{ROOT}/a")
    raises(errno.ENOENT, k.rmdir, f"{ROOT}/a")


def test_rule_v1_limits():
    k = v1()
    m = f"{ROOT}/memory/sandbox/abc"
    k.write(f"{m}/memory.limit_in_bytes", "-1")
    raises(errno.EINVAL, k.write, f"{m}/memory.limit_in_bytes", "max")
    raises(errno.EINVAL, k.write, f"{ROOT}/cpu/cpu.cfs_quota_us", "999")
    raises(errno.EINVAL, k.write, f"{ROOT}/cpu/cpu.cfs_period_us", "2000000")
    raises(errno.ENOENT, k.write, f"{m}/cgroup.subtree_control", "+memory")   # not in v1
    k.mkcgroup("/sandbox/abc/x", "memory")
    k.spawn(5, "/sandbox/abc/x", "memory")
    raises(errno.EBUSY, k.rmdir, f"{m}/x")


def test_cpu_usage_is_the_cgroups_own():
    k = v2("/")
    cg = guest(k, None, cpu=0.5)
    k.set_value(f"{cg.path}/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n"
                "system_usec 500000\nnr_periods 30\nnr_throttled 20\nthrottled_usec 900000\n")
    usage = cg.cpu_usage()
    assert usage["seconds"] == 1.5 and usage["nr_throttled"] == 20 and usage["nr_periods"] == 30
    assert usage["throttled_seconds"] == 0.9 and usage["wall"] >= 0
    cg.close()
    k1 = v1()
    cg = GuestCgroup("g", None, cpu_quota=0.5, root=ROOT, fs=k1, pid=99)
    k1.set_value(f"{ROOT}/cpu/kvmm-99-g/cpuacct.usage", "2000000000\n")
    k1.set_value(f"{ROOT}/cpu/kvmm-99-g/cpu.stat", "nr_periods 5\nnr_throttled 4\n"
                 "throttled_time 300000000\n")
    usage = cg.cpu_usage()
    assert (usage["seconds"], usage["nr_throttled"], usage["throttled_seconds"]) == (2.0, 4, 0.3)
    cg.close()
    with GuestCgroup("h", MiB, root=ROOT, fs=k1, pid=99) as memory_only:
        assert memory_only.cpu_usage() == {}
