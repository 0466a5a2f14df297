"""kvmm jail's input checks, symlink resolution, ELF/shebang reading and
cgroup planning (kvmm/jail/), without root or /dev/kvm."""
import os
import sys

import pytest

from kvmm.cli.jail import split_monitor_args
from kvmm.jail.spec import JailError, jail_spec
from kvmm.jail import cgroup
from kvmm.jail.root import elf_interpreter, resolve, shebang


@pytest.fixture
def exec_file(tmp_path):
    path = tmp_path / "firecracker"
    path.write_text("#!/usr/bin/python3 -I\nprint()\n")
    path.chmod(0o755)
    return str(path)


def spec(exec_file, **kw):
    args = dict(id="vm-1", exec_file=exec_file, uid="1000", gid="1000")
    args.update(kw)
    return jail_spec(**args)


def test_defaults_follow_firecracker(exec_file):
    s = spec(exec_file, monitor_args=["--config-file", "vm.json"])
    assert s.root == "/srv/jailer/firecracker/vm-1/root"
    assert s.pid_file == "/srv/jailer/firecracker/vm-1/root/firecracker.pid"
    assert s.cgroup_parent == "firecracker" and s.cgroup_version == 1
    assert s.resource_limits == {"no-file": 2048}
    assert s.config_file() == "vm.json"
    assert spec(exec_file, monitor_args=["--config-file=a.json"]).config_file() == "a.json"


@pytest.mark.parametrize("bad", ["", "a" * 65, "a b", "a_b", "é", "../x"])
def test_bad_ids(exec_file, bad):
    with pytest.raises(JailError, match="--id"):
        spec(exec_file, id=bad)


def test_id_of_64(exec_file):
    assert spec(exec_file, id="a" * 64).id == "a" * 64


@pytest.mark.parametrize("kw, where", [
    (dict(chroot_base_dir="srv/jailer"), "--chroot-base-dir"),
    (dict(chroot_base_dir="/srv/../etc"), "--chroot-base-dir"),
    (dict(uid="-1"), "--uid"), (dict(gid="x"), "--gid"), (dict(uid=None), "--uid"),
    (dict(cgroup=["memory.max"]), "--cgroup"), (dict(cgroup=["../tasks=1"]), "--cgroup"),
    (dict(cgroup=["cpu.max=1", "cpu.max=2"]), "--cgroup"),
    (dict(cgroup_version="3"), "--cgroup-version"),
    (dict(parent_cgroup="/abs"), "--parent-cgroup"), (dict(parent_cgroup="a/../b"),
                                                      "--parent-cgroup"),
    (dict(resource_limit=["nproc=1"]), "--resource-limit"),
    (dict(resource_limit=["fsize=-1"]), "--resource-limit"),
    (dict(netns="/nonexistent/netns"), "--netns"),
])
def test_bad_flags_name_the_flag(exec_file, kw, where):
    with pytest.raises(JailError) as e:
        spec(exec_file, **kw)
    assert str(e.value).startswith(where)


def test_exec_file_checks(tmp_path, exec_file):
    with pytest.raises(JailError, match="cannot use it"):
        spec(str(tmp_path / "no" / "firecracker"))
    other = tmp_path / "monitor"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    with pytest.raises(JailError, match="must contain 'firecracker'"):
        spec(str(other))
    os.chmod(exec_file, 0o644)
    with pytest.raises(JailError, match="not an executable"):
        spec(exec_file)


def test_resource_limits(exec_file):
    s = spec(exec_file, resource_limit=["fsize=1000", "no-file=64"])
    assert s.resource_limits == {"fsize": 1000, "no-file": 64}


def test_monitor_args_after_double_dash():
    assert split_monitor_args(["--id", "a", "--", "--config-file", "x", "--", "y"]) == \
        (["--id", "a"], ["--config-file", "x", "--", "y"])
    assert split_monitor_args(["--id", "a"]) == (["--id", "a"], [])


def test_shebang_and_elf_interpreter(exec_file):
    assert shebang(exec_file) == "/usr/bin/python3"
    loader = elf_interpreter(os.path.realpath(sys.executable))
    assert loader is None or os.path.exists(loader)
    assert elf_interpreter(exec_file) is None


def test_resolve_keeps_symlink_chains_and_drops_nested(tmp_path):
    real = tmp_path / "real"
    (real / "lib").mkdir(parents=True)
    (real / "lib" / "libx.so").write_text("")
    (tmp_path / "link").symlink_to("real")
    (real / "alias").symlink_to(str(real / "lib" / "libx.so"))
    runtime = resolve([str(tmp_path / "link" / "alias"), str(real / "lib"),
                       str(real / "lib" / "libx.so")])
    assert runtime.binds == [str(real / "lib")]
    assert (str(tmp_path / "link"), "real") in runtime.links
    assert (str(real / "alias"), str(real / "lib" / "libx.so")) in runtime.links


def mounts_file(tmp_path, text):
    path = tmp_path / "mounts"
    path.write_text(text)
    return str(path)


V1 = ("cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
      "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n")


def test_plan_v1_groups_files_by_hierarchy(tmp_path, exec_file):
    s = spec(exec_file, cgroup=["memory.limit_in_bytes=1", "cpu.cfs_quota_us=2",
                                "cpuacct.usage=0"])
    groups = cgroup.plan(s, mounts_file(tmp_path, V1))
    by = {g.hierarchy: sorted(c.file for c in g.settings) for g in groups}
    assert by == {"/sys/fs/cgroup/memory": ["memory.limit_in_bytes"],
                  "/sys/fs/cgroup/cpu,cpuacct": ["cpu.cfs_quota_us", "cpuacct.usage"]}
    assert all(g.path.endswith("/firecracker/vm-1") for g in groups)


def test_plan_refuses_a_missing_controller(tmp_path, exec_file):
    with pytest.raises(JailError, match="no such cgroup file"):
        cgroup.plan(spec(exec_file, cgroup=["pids.max=1"]), mounts_file(tmp_path, V1))
    hierarchy = tmp_path / "unified"
    hierarchy.mkdir()
    (hierarchy / "cgroup.controllers").write_text("cpu\n")
    v2 = mounts_file(tmp_path, f"cgroup2 {hierarchy} cgroup2 rw 0 0\n")
    with pytest.raises(JailError, match="no 'memory' controller"):
        cgroup.plan(spec(exec_file, cgroup_version="2", cgroup=["memory.max=1"]), v2)
    groups = cgroup.plan(spec(exec_file, cgroup_version="2",
                              cgroup=["cgroup.max.depth=1", "cpu.max=max"]), v2)
    assert groups[0].controllers == {"cpu"}


def test_create_refuses_a_file_the_cgroup_lacks_and_undoes(tmp_path, exec_file):
    from contextlib import ExitStack
    hierarchy = tmp_path / "memory"
    hierarchy.mkdir()
    s = spec(exec_file, cgroup=["memory.limit_in_bytes=1"], parent_cgroup="a/b")
    groups = cgroup.plan(s, mounts_file(tmp_path, f"cgroup {hierarchy} cgroup rw,memory 0 0\n"))
    with pytest.raises(JailError, match="no such cgroup file"):
        with ExitStack() as undo:
            cgroup.create(groups, s, undo)
    assert os.listdir(hierarchy) == []
