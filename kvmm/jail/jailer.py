"""The jail's sequence, in Firecracker's jailer's order: check the input,
close inherited fds, clear the environment, build the root, check the guest's
files as the jail's uid, cgroups, rlimits, new namespaces, pivot_root, the
network namespace, (daemonize), (a new pid namespace), drop to the uid/gid
with no capabilities, exec the monitor.

Everything that can fail because of the input happens before the first
change that cannot be undone; a failure rolls back every directory, file and
cgroup made so far (`ExitStack`). Past pivot_root there is no way back to the
host's filesystem: a failure there is the host's (exit 1).
"""
from __future__ import annotations

import os
import resource
import shutil
import time
from contextlib import ExitStack

from kvmm.jail import cgroup, linux, root as jailroot
from kvmm.jail.spec import RESOURCE_LIMITS, JailError, JailFailure, JailSpec

OLD_ROOT = "old_root"
NAMESPACES = linux.CLONE_NEWNS | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS


def close_inherited_fds() -> None:
    """Every fd but stdin, stdout and stderr (/proc/self/fd, as Firecracker's jailer)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _make_path(path: str, undo: ExitStack) -> None:
    """mkdir -p on the host; each directory made is removed again by `undo`."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue
        except OSError as e:
            raise JailFailure(f"cannot create {directory} ({e.strerror})") from None
        undo.callback(jailroot.remove, directory)


def _claim(spec: JailSpec, undo: ExitStack) -> None:
    """The root may exist already, holding the guest's files (orchestrators
    such as Kata put them there first); a root that a jail has used (it has
    the jailer's own entries) is refused. mkdir of `dev` is the atomic claim."""
    exists = JailError(f"--id {spec.id}", f"a jail for this id exists at {spec.jail_dir} "
                                          "(stop its monitor and remove the directory)")
    for name in (spec.exec_name, os.path.basename(spec.pid_file), *jailroot.JAILER_ENTRIES):
        if os.path.lexists(os.path.join(spec.root, name)):
            raise exists
    _make_path(spec.root, undo)
    for name in jailroot.JAILER_ENTRIES:
        try:
            os.mkdir(os.path.join(spec.root, name), 0o755)
        except FileExistsError:
            raise exists from None
        undo.callback(jailroot.remove, os.path.join(spec.root, name))


def _set_limits(spec: JailSpec) -> None:
    for name, value in spec.resource_limits.items():
        which = getattr(resource, RESOURCE_LIMITS[name])
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as e:
            raise JailError(f"--resource-limit {name}={value}", f"refused ({e})") from None


def _pivot(root: str) -> None:
    """pivot_root into `root` and drop the old root (Firecracker's jailer's steps)."""
    os.chdir(root)
    os.mkdir(OLD_ROOT, 0o700)
    linux.pivot_root(".", OLD_ROOT)
    linux.umount2(OLD_ROOT, linux.MNT_DETACH)
    os.rmdir(OLD_ROOT)
    os.chroot(".")
    os.chdir("/")


def _drop_privileges(spec: JailSpec, last_cap: int) -> None:
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    linux.drop_bounding_set(last_cap)
    os.setgroups([])
    os.setresgid(spec.gid, spec.gid, spec.gid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    linux.clear_capabilities()


def _write_pid_file(spec: JailSpec, pid: int) -> None:
    path = "/" + os.path.basename(spec.pid_file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)


def run(spec: JailSpec, start_us: int, start_cpu_us: int) -> None:
    """Build the jail and exec the monitor in it; returns only by raising
    JailError (bad input, nothing left behind) or JailFailure/OSError."""
    close_inherited_fds()
    pythonpath = os.environ.get("PYTHONPATH", "")
    os.environ.clear()
    runtime = jailroot.resolve(jailroot.probe(spec.exec_file, pythonpath))
    groups = cgroup.plan(spec)
    with ExitStack() as undo:
        _claim(spec, undo)
        files = jailroot.guest_files(spec)
        jailroot.check_access(spec, files)
        cgroup.create(groups, spec, undo)
        exec_copy = os.path.join(spec.root, spec.exec_name)
        shutil.copyfile(spec.exec_file, exec_copy)
        undo.callback(jailroot.remove, exec_copy)
        os.chmod(exec_copy, 0o755)
        netns_fd = None
        if spec.netns is not None:
            netns_fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
            undo.callback(os.close, netns_fd)
        null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if spec.daemonize else None
        last_cap = linux.cap_last_cap()
        _set_limits(spec)
        cgroup.attach(groups, os.getpid(), undo)
        linux.unshare(NAMESPACES | (linux.CLONE_NEWPID if spec.new_pid_ns else 0))
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.mount(spec.root, spec.root, None, linux.MS_BIND | linux.MS_REC)
        try:
            jailroot.bind_runtime(spec.root, runtime, undo)
            jailroot.protect(spec.root, files)
            jailroot.make_devices(spec.root, spec.uid, spec.gid)
            if not spec.new_pid_ns:
                jailroot.mount_proc(os.path.join(spec.root, "proc"), own_pid_ns=False)
            if netns_fd is not None:
                linux.setns(netns_fd, linux.CLONE_NEWNET)
            _pivot(spec.root)
        except BaseException:
            # mounts exist only in this process's namespace; detach them so
            # that the directories under them can be removed
            os.chdir("/")
            linux.umount2(spec.root, linux.MNT_DETACH)
            try:
                os.rmdir(os.path.join(spec.root, OLD_ROOT))
            except OSError:
                pass
            raise
        undo.pop_all()                    # past pivot_root: the host's paths are gone
    os.chown("/", spec.uid, spec.gid)
    os.chown("/run", spec.uid, spec.gid)
    if spec.daemonize:
        try:
            os.setsid()
        except OSError as e:
            raise JailFailure(f"--daemonize: setsid failed ({e.strerror}): the jailer must "
                              "not lead a process group") from None
        for fd in (0, 1, 2):
            os.dup2(null_fd, fd)
        os.close(null_fd)
    if spec.new_pid_ns:
        child = os.fork()
        if child:
            _write_pid_file(spec, child)
            os._exit(0)
        jailroot.mount_proc("/proc", own_pid_ns=True)
    else:
        _write_pid_file(spec, os.getpid())
    _drop_privileges(spec, last_cap)
    argv = [spec.exec_name, f"--id={spec.id}", f"--start-time-us={start_us}",
            f"--start-time-cpu-us={start_cpu_us}",
            f"--parent-cpu-time-us={_us(time.process_time())}", *spec.monitor_args]
    os.execve("/" + spec.exec_name, argv, {})
