"""`kvmm jail` (kvmm/jail/) as root on a real /dev/kvm: a jailed `kvmm
firecracker` boots the guest kernel; the monitor runs with the jail's uid/gid
and no capabilities, in its own cgroup (v1 and v2), with its rlimits, network
namespace and root; a second jail is invisible from the first; each bad input
is one line, exit 2, and leaves nothing behind.

The jailer is run as `python -m kvmm.jail` (the same code as `kvmm jail`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests.integration.conftest import REPO, Run

pytestmark = pytest.mark.kvm

JAIL = [sys.executable, "-m", "kvmm.jail"]
MONITOR = os.path.join(os.path.dirname(sys.executable), "kvmm-firecracker")
UID, GID, OTHER_UID = 1234, 1235, 1236
CGROUP_ROOT = "/sys/fs/cgroup"
JAILER_ENTRIES = {"firecracker", "firecracker.pid", "dev", "run", "proc"}


def _require_root_and_kvm():
    from tests.integration.conftest import _kvm_problem, require
    require("the jail needs root" if os.geteuid() != 0 else None)
    require(_kvm_problem())


class Jails:
    """Jails under a fresh base directory and parent cgroup; everything they
    made is removed at the end (monitors killed, directories, cgroups)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.base = os.path.join(tmp, "base")
        self.parent = f"kvmm-jail-test-{uuid.uuid4().hex[:8]}"
        self.exec_file = os.path.join(tmp, "firecracker")
        os.symlink(MONITOR, self.exec_file)
        self.procs: list[subprocess.Popen] = []

    def root(self, jail_id: str) -> str:
        return os.path.join(self.base, "firecracker", jail_id, "root")

    def prepare(self, jail_id: str, config: dict | None = None, disk: int = 0) -> str:
        """The orchestrator's part: the root with the guest's files in it."""
        from kvmm.guest_image import default_kernel
        root = self.root(jail_id)
        os.makedirs(root)
        shutil.copyfile(default_kernel(), os.path.join(root, "kernel"))
        if disk:
            with open(os.path.join(root, "disk.img"), "wb") as f:
                f.truncate(disk)
            os.chown(os.path.join(root, "disk.img"), UID, GID)
        if config is not None:
            with open(os.path.join(root, "vm.json"), "w") as f:
                json.dump(config, f)
        return root

    def args(self, jail_id: str, *extra: str, uid: int = UID, monitor=()) -> list[str]:
        return [*JAIL, "--id", jail_id, "--exec-file", self.exec_file, "--uid", str(uid),
                "--gid", str(GID), "--chroot-base-dir", self.base, "--parent-cgroup",
                self.parent, *extra, "--", *monitor]

    def run(self, jail_id: str, *extra: str, timeout: float = 30, **kw) -> Run:
        return Run(subprocess.run(self.args(jail_id, *extra, **kw), cwd=REPO, text=True,
                                  capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL))

    def start(self, jail_id: str, *extra: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.args(jail_id, *extra, **kw), cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def pid(self, jail_id: str, seconds: float = 20) -> int:
        """The monitor's pid from <root>/firecracker.pid, once its API answers."""
        path = os.path.join(self.root(jail_id), "firecracker.pid")
        sock = os.path.join(self.root(jail_id), "run", "firecracker.socket")
        deadline = time.monotonic() + seconds
        while not (os.path.exists(path) and os.path.exists(sock)):
            assert time.monotonic() < deadline, f"jail {jail_id} did not start"
            time.sleep(0.01)
        with open(path) as f:
            return int(f.read())

    def cgroups(self) -> list[str]:
        """The parent cgroup's directories in every hierarchy (what to remove)."""
        out = []
        for hierarchy in os.listdir(CGROUP_ROOT):
            top = os.path.join(CGROUP_ROOT, hierarchy, self.parent)
            if os.path.isdir(top):
                out += [os.path.join(d, n) for d, dirs, _ in os.walk(top) for n in dirs]
                out.append(top)
        return out

    def snapshot(self) -> tuple:
        tree = sorted(os.path.join(d, n) for d, dirs, files in os.walk(self.base)
                      for n in dirs + files) if os.path.exists(self.base) else []
        return tree, sorted(self.cgroups())

    def cleanup(self) -> None:
        for root in self._roots():
            try:
                with open(os.path.join(root, "firecracker.pid")) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        deadline = time.monotonic() + 5
        for directory in sorted(self.cgroups(), key=len, reverse=True):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"cannot remove {directory}"
                    time.sleep(0.02)
        shutil.rmtree(self.base, ignore_errors=True)

    def _roots(self) -> list[str]:
        top = os.path.join(self.base, "firecracker")
        return [os.path.join(top, j, "root") for j in os.listdir(top)] \
            if os.path.isdir(top) else []


@pytest.fixture
def jails():
    """Jails under a short directory of their own: the API socket's path inside a
    root must fit a Unix socket address (108 bytes), which pytest's deeply
    numbered tmp_path does not always leave room for."""
    _require_root_and_kvm()
    tmp = tempfile.mkdtemp(prefix="kj-", dir="/tmp")
    j = Jails(tmp)
    try:
        yield j
    finally:
        j.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def netns():
    name = f"kvmm-jail-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield f"/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


def status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def limits(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/limits") as f:
        for line in f.readlines()[1:]:
            name, soft = line[:26].strip(), line[26:47].strip()
            out[name] = soft
    return out


def mounts(pid: int) -> dict:
    """mount point -> options, as the monitor sees them."""
    out = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            out[fields[4]] = set(fields[5].split(","))
    return out


def test_jailed_monitor_boots_the_guest(jails):
    config = {"boot-source": {"kernel_image_path": "/kernel", "boot_args": "mode=blktest"},
              "drives": [{"drive_id": "d0", "path_on_host": "disk.img",
                          "is_root_device": False, "serial": "SER0"}]}
    jails.prepare("boot", config, disk=16 << 20)
    run = jails.run("boot", monitor=["--config-file", "vm.json", "--no-api"])
    assert run.status == 0, run
    verdict = run.verdict()
    assert verdict["result"] == "PASS" and verdict["serial0"] == "SER0", run


def test_jailed_monitor_process(jails, netns):
    """uid/gid, capabilities, cgroup v1 files, rlimits, netns, --daemonize, the
    pid file, the root's contents and mounts, and the API socket."""
    config = {"boot-source": {"kernel_image_path": "/kernel", "boot_args": "mode=blkwrite"},
              "drives": [{"drive_id": "d0", "path_on_host": "/disk.img",
                          "is_root_device": False}]}
    root = jails.prepare("one", config, disk=4 << 20)
    proc = jails.start("one", "--cgroup", "memory.limit_in_bytes=268435456",
                       "--cgroup", "cpu.cfs_quota_us=50000", "--resource-limit",
                       "fsize=1048576", "--resource-limit", "no-file=512", "--netns", netns,
                       "--daemonize", monitor=["--config-file", "vm.json"])
    pid = jails.pid("one")
    assert pid == proc.pid                        # the jailer became the monitor
    st = status(pid)
    assert st["Name"] == "firecracker"
    assert st["Uid"].split() == [str(UID)] * 4 and st["Gid"].split() == [str(GID)] * 4
    assert st["Groups"].strip() == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    lim = limits(pid)
    assert lim["Max file size"] == "1048576" and lim["Max open files"] == "512"
    for controller, name, value in (("memory", "memory.limit_in_bytes", "268435456"),
                                    ("cpu", "cpu.cfs_quota_us", "50000")):
        group = os.path.join(CGROUP_ROOT, controller, jails.parent, "one")
        with open(os.path.join(group, name)) as f:
            assert f.read().strip() == value
        with open(os.path.join(group, "cgroup.procs")) as f:
            assert str(pid) in f.read().split()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
    assert os.getsid(pid) == pid                  # --daemonize: its own session
    assert os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
    # the root: the guest's files, the jailer's entries, the runtime's
    # read-only binds and their symlinks, nothing else
    seen = mounts(pid)
    runtime = {p for p in seen if p not in ("/", "/dev", "/proc", "/kernel", "/vm.json")}
    assert runtime and all("ro" in seen[p] for p in runtime), seen
    assert "ro" in seen["/kernel"] and "ro" in seen["/vm.json"] and "ro" in seen["/dev"]
    tops = {p.split("/")[1] for p in runtime}
    inside = f"/proc/{pid}/root"
    for name in os.listdir(inside):
        assert name in {"kernel", "vm.json", "disk.img"} | JAILER_ENTRIES | tops or \
            os.path.islink(os.path.join(inside, name)), name
    assert sorted(os.listdir(os.path.join(inside, "dev"))) == ["kvm", "net"]
    assert os.listdir(os.path.join(inside, "dev", "net")) == ["tun"]
    from kvmm.api.client import request
    deadline = time.monotonic() + 10
    while True:                          # the socket's file exists just before listen()
        try:
            code, answer = request(os.path.join(root, "run", "firecracker.socket"), "GET",
                                   "/", None, 10)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert code == 200 and answer["state"] == "Running" and answer["id"] == "one"
    os.kill(pid, signal.SIGTERM)
    assert proc.wait(20) == 0


def test_second_jail_is_invisible_and_new_pid_ns_and_cgroup_v2(jails):
    jails.prepare("first")
    jails.prepare("second")
    first = jails.start("first")
    second = jails.start("second", "--new-pid-ns", "--cgroup-version", "2",
                         "--cgroup", "cgroup.max.descendants=0", uid=OTHER_UID)
    assert second.wait(20) == 0                    # the jailer exits once the child runs
    p1, p2 = jails.pid("first"), jails.pid("second")
    assert p1 == first.pid and p2 != p1
    assert status(p2)["NSpid"].split() == [str(p2), "1"]   # pid 1 of its own namespace
    group = os.path.join(CGROUP_ROOT, "unified", jails.parent, "second")
    with open(os.path.join(group, "cgroup.max.descendants")) as f:
        assert f.read().strip() == "0"
    with open(os.path.join(group, "cgroup.procs")) as f:
        assert str(p2) in f.read().split()
    # what the first jail's uid sees from inside its root: its own process
    # only, and none of the second's files
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_fd)
            os.chroot(f"/proc/{p1}/root")
            os.setgroups([])
            os.setresgid(GID, GID, GID)
            os.setresuid(UID, UID, UID)
            pids = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
            inodes = sorted(os.lstat("/" + n).st_ino for n in os.listdir("/"))
            found = {"pids": pids, "inodes": inodes}
            os.write(write_fd, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        found = json.loads(f.read())
    os.waitpid(child, 0)
    assert p1 in found["pids"] and p2 not in found["pids"], found
    second_root = jails.root("second")
    theirs = {os.stat(os.path.join(second_root, n)).st_ino for n in os.listdir(second_root)
              if os.path.isfile(os.path.join(second_root, n))}
    assert theirs and not theirs & set(found["inodes"]), found
    os.kill(p1, signal.SIGTERM)
    os.kill(p2, signal.SIGTERM)
    assert first.wait(20) == 0


def _unreadable_kernel(jails):
    root = jails.prepare("bad", {"boot-source": {"kernel_image_path": "/kernel"}})
    os.chmod(os.path.join(root, "kernel"), 0o600)
    return ["--id", "bad"], ["--config-file", "vm.json"]


def _used_jail(jails):
    jails.prepare("bad")
    run = jails.run("bad", monitor=["--version"])
    assert run.status == 0, run
    return ["--id", "bad"], []


BAD = {
    "id-characters": lambda j: (["--id", "bad_id!"], []),
    "id-too-long": lambda j: (["--id", "a" * 65], []),
    "exec-file-missing": lambda j: (["--id", "bad", "--exec-file",
                                     os.path.join(j.tmp, "no", "firecracker")], []),
    "chroot-base-relative": lambda j: (["--id", "bad", "--chroot-base-dir", "srv/jailer"], []),
    "guest-file-unreadable": _unreadable_kernel,
    "jail-exists": _used_jail,
    "cgroup-v1-file-missing": lambda j: (["--id", "bad", "--cgroup",
                                          "memory.no_such_file=1"], []),
    "cgroup-v2-file-missing": lambda j: (["--id", "bad", "--cgroup-version", "2",
                                          "--cgroup", "memory.max=1"], []),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_left(jails, case):
    extra, monitor = BAD[case](jails)
    before = jails.snapshot()
    jail_id = extra[1]
    args = jails.args("bad", monitor=monitor)
    # the case's flags replace the defaults (the parser keeps the last)
    args[args.index("--"):args.index("--")] = extra
    assert "--id" in args and jail_id
    proc = subprocess.run(args, cwd=REPO, text=True, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmm jail: "), proc.stderr
    assert proc.stdout == ""
    assert jails.snapshot() == before, lines[0]
