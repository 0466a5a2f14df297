"""Per-guest cgroups on fake cgroup file systems (v1 and v2 layouts)."""
import os

import pytest

from kvmm.quota.cgroup import CPU_PERIOD_US, CgroupError, GuestCgroup, detect, own_cgroups


def fake_v2(tmp_path, own="/user.slice/session", controllers="cpu memory pids"):
    root = tmp_path / "cg"
    parent = root / own.lstrip("/")
    parent.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.subtree_control").write_text("")
    (parent / "cgroup.procs").write_text("")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, parent, proc


def fake_v1(tmp_path, memory_path="/sandbox/abc"):
    root = tmp_path / "cg"
    for controller, path in (("memory", memory_path), ("cpu", "/")):
        d = root / controller / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("")
    (root / "memory" / "cgroup.procs").write_text("")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"4:memory:{memory_path}\n1:cpu,cpuacct:/\n0::/\n")
    return root, proc


class FakeKernel:
    """In the kernel, mkdir of a cgroup creates its control files and rmdir
    removes them; a plain directory does neither, so both are patched."""

    def __init__(self, monkeypatch, files):
        real = os.mkdir

        def mkdir(path, *a, **kw):
            real(path, *a, **kw)
            for name in files:
                with open(os.path.join(path, name), "w") as f:
                    f.write("0\n" if name != "memory.max" else "max\n")
        monkeypatch.setattr(os, "mkdir", mkdir)
        real_rmdir = os.rmdir

        def rmdir(path):          # cgroupfs removes a cgroup with its control files in it
            for name in os.listdir(path):
                os.unlink(os.path.join(path, name))
            real_rmdir(path)
        monkeypatch.setattr(os, "rmdir", rmdir)


def test_own_cgroups_parses_both_layouts(tmp_path):
    p = tmp_path / "c"
    p.write_text("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/user\n")
    assert own_cgroups(str(p)) == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/user"}


def test_detect(tmp_path):
    root, _parent, proc = fake_v2(tmp_path)
    assert detect(str(root), str(proc)) == "v2"
    root2, proc2 = fake_v1(tmp_path / "v1")
    assert detect(str(root2), str(proc2)) == "v1"
    empty = tmp_path / "none"
    empty.mkdir()
    assert detect(str(empty), str(proc)) == ""


def test_v2_memory_and_cpu(tmp_path, monkeypatch):
    root, parent, proc = fake_v2(tmp_path)
    FakeKernel(monkeypatch, ["cgroup.procs", "memory.max", "memory.current", "cpu.max"])
    cg = GuestCgroup("g1", 100 << 20, cpu_quota=1.5, root=str(root), proc_cgroup=str(proc),
                     pid=4242)
    leaf = parent / "kvmm-4242-g1"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (leaf / "memory.max").read_text() == str(100 << 20)
    assert (leaf / "cpu.max").read_text() == f"{int(1.5 * CPU_PERIOD_US)} {CPU_PERIOD_US}"
    assert (leaf / "cgroup.procs").read_text() == "4242"       # only the monitor moved
    cg.close()
    assert not leaf.exists()
    assert (parent / "cgroup.procs").read_text() == "4242"     # and moved back


def test_v2_controllers_already_enabled_are_left_alone(tmp_path, monkeypatch):
    root, parent, proc = fake_v2(tmp_path)
    (parent / "cgroup.subtree_control").write_text("memory cpu\n")
    FakeKernel(monkeypatch, ["cgroup.procs", "memory.max"])
    GuestCgroup("g", 1 << 30, root=str(root), proc_cgroup=str(proc), pid=7).close()
    assert (parent / "cgroup.subtree_control").read_text() == "memory cpu\n"


def test_v1_memory_and_cpu(tmp_path, monkeypatch):
    root, proc = fake_v1(tmp_path)
    FakeKernel(monkeypatch, ["cgroup.procs", "memory.limit_in_bytes", "memory.usage_in_bytes",
                             "memory.max_usage_in_bytes", "memory.failcnt",
                             "cpu.cfs_period_us", "cpu.cfs_quota_us"])
    cg = GuestCgroup("g", 64 << 20, cpu_quota=0.25, root=str(root), proc_cgroup=str(proc),
                     pid=99)
    mem_leaf = root / "memory" / "sandbox" / "abc" / "kvmm-99-g"
    cpu_leaf = root / "cpu" / "kvmm-99-g"
    assert (mem_leaf / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (cpu_leaf / "cpu.cfs_quota_us").read_text() == str(CPU_PERIOD_US // 4)
    assert (cpu_leaf / "cpu.cfs_period_us").read_text() == str(CPU_PERIOD_US)
    assert cg.memory_usage()["limit"] == 64 << 20
    cg.close()
    assert not mem_leaf.exists() and not cpu_leaf.exists()


def test_no_controller_is_a_clear_error(tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    proc = tmp_path / "p"
    proc.write_text("0::/\n")
    with pytest.raises(CgroupError, match="no cgroup memory controller"):
        GuestCgroup("g", 1, root=str(empty), proc_cgroup=str(proc))


def test_failure_midway_cleans_up(tmp_path, monkeypatch):
    root, parent, proc = fake_v2(tmp_path)
    FakeKernel(monkeypatch, ["cgroup.procs"])       # no memory.max: the write fails
    os.chmod(parent, 0o755)
    with pytest.raises(CgroupError):
        # cpu.max cannot be written into a directory that is missing
        GuestCgroup("g", 1 << 20, cpu_quota=1.0, root=str(root / "missing"),
                    proc_cgroup=str(proc), pid=5)
