"""The jail's own cgroup: `<hierarchy>/<parent>/<id>`, made and filled the way
Firecracker's jailer does it (the `--cgroup FILE=VALUE` files written directly),
for cgroup v1 (one hierarchy per controller, found in /proc/mounts) and v2
(the unified hierarchy; the controllers a file needs are enabled in each
ancestor's cgroup.subtree_control).
"""
from __future__ import annotations

import os
from contextlib import ExitStack

from kvmm.jail.spec import JailError, JailFailure, JailSpec

CORE = "cgroup"          # cgroup.* files belong to the core, not to a controller


def mounts(mounts_file: str = "/proc/mounts") -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of every cgroup and cgroup2 mount."""
    out = []
    with open(mounts_file) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                out.append((fields[1].replace("\\040", " "), fields[2],
                            set(fields[3].split(","))))
    return out


def _own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """hierarchy key ('' for v2, else its comma-joined controllers) -> own path."""
    out = {}
    with open(proc_cgroup) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            out[controllers] = path
    return out


class JailCgroup:
    """One hierarchy's cgroup for the jail, and the settings it gets."""

    def __init__(self, hierarchy: str, relative: str, key: str):
        self.hierarchy = hierarchy          # the mount point
        self.relative = relative            # <parent>/<id>
        self.key = key                      # in /proc/self/cgroup
        self.path = os.path.join(hierarchy, relative)
        self.settings: list = []
        self.controllers: set[str] = set()


def plan(spec: JailSpec, mounts_file: str = "/proc/mounts") -> list[JailCgroup]:
    """Which hierarchy each --cgroup file goes to; JailError when none offers it."""
    if not spec.cgroups:
        return []
    relative = f"{spec.cgroup_parent}/{spec.id}"
    found = mounts(mounts_file)
    if spec.cgroup_version == 2:
        v2 = [m for m in found if m[1] == "cgroup2"]
        if not v2:
            raise JailError("--cgroup-version 2", "no cgroup v2 hierarchy is mounted "
                                                  "(/proc/mounts)")
        group = JailCgroup(v2[0][0], relative, "")
        group.settings = list(spec.cgroups)
        group.controllers = {c.controller for c in spec.cgroups} - {CORE}
        available = _read(os.path.join(group.hierarchy, "cgroup.controllers")).split()
        for c in spec.cgroups:
            if c.controller != CORE and c.controller not in available:
                raise JailError(f"--cgroup {c.file}={c.value}", f"no such cgroup file: the "
                                f"v2 hierarchy at {group.hierarchy} has no {c.controller!r} "
                                f"controller (it offers: {' '.join(available) or 'none'})")
        return [group]
    groups: dict[str, JailCgroup] = {}
    for c in spec.cgroups:
        where = f"--cgroup {c.file}={c.value}"
        if c.controller == CORE:
            raise JailError(where, "with cgroup v1 give a controller's file (e.g. "
                                   "cpu.cfs_quota_us)")
        point = next((m for m in found if m[1] == "cgroup" and c.controller in m[2]), None)
        if point is None:
            raise JailError(where, f"no such cgroup file: no cgroup v1 hierarchy has the "
                                   f"{c.controller!r} controller (/proc/mounts)")
        key = ",".join(sorted(o for o in point[2] if o not in ("rw", "ro", "relatime",
                                                                  "nosuid", "nodev", "noexec")))
        group = groups.setdefault(point[0], JailCgroup(point[0], relative, key))
        group.settings.append(c)
        group.controllers.add(c.controller)
    return list(groups.values())


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def create(groups: list[JailCgroup], spec: JailSpec, undo: ExitStack) -> None:
    """Make each cgroup (and missing ancestors) and write the settings; every
    directory made is removed again by `undo`. JailError for an existing jail
    cgroup, a file the cgroup does not have, or a value the kernel refuses."""
    for group in groups:
        if os.path.exists(group.path):
            raise JailError(f"--id {spec.id}", f"the cgroup {group.path} exists already (a "
                                               "jail with this id runs, or was not cleaned "
                                               "up: remove the directory)")
    for group in groups:
        current = group.hierarchy
        for part in group.relative.split("/"):
            if group.controllers and group.key == "":
                _enable_controllers(current, group.controllers)
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                continue
            except OSError as e:
                raise JailFailure(f"cannot create the cgroup {current} ({e.strerror})") \
                    from None
            undo.callback(_rmdir, current)
            if "cpuset" in group.controllers and group.key != "":
                _inherit_cpuset(current)
        for c in group.settings:
            path = os.path.join(group.path, c.file)
            if not os.path.isfile(path):
                raise JailError(f"--cgroup {c.file}={c.value}", f"no such cgroup file "
                                                               f"{path}")
            try:
                _write(path, c.value)
            except OSError as e:
                raise JailError(f"--cgroup {c.file}={c.value}", f"{path} refused the value "
                                                               f"({e.strerror})") from None


def _enable_controllers(directory: str, controllers: set[str]) -> None:
    enabled = _read(os.path.join(directory, "cgroup.subtree_control")).split()
    missing = sorted(controllers - set(enabled))
    if missing:
        try:
            _write(os.path.join(directory, "cgroup.subtree_control"),
                   " ".join("+" + c for c in missing))
        except OSError as e:
            raise JailFailure(f"cannot enable {' '.join(missing)} in "
                              f"{directory}/cgroup.subtree_control ({e.strerror})") from None


def _inherit_cpuset(directory: str) -> None:
    """A new v1 cpuset cgroup starts with no CPUs and no memory nodes: copy
    its parent's, so that a process can join it (as Firecracker's jailer)."""
    parent = os.path.dirname(directory)
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(os.path.join(directory, name)):
            _write(os.path.join(directory, name), _read(os.path.join(parent, name)))


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def attach(groups: list[JailCgroup], pid: int, undo: ExitStack,
           proc_cgroup: str = "/proc/self/cgroup") -> None:
    """Move `pid` into each jail cgroup; `undo` moves it back to where it was
    (a cgroup with a process in it cannot be removed)."""
    own = _own_cgroups(proc_cgroup)
    for group in groups:
        back = os.path.join(group.hierarchy, own.get(group.key, "/").lstrip("/"))
        try:
            _write(os.path.join(group.path, "cgroup.procs"), str(pid))
        except OSError as e:
            raise JailFailure(f"cannot move the monitor into {group.path} ({e.strerror})") \
                from None
        undo.callback(_move_back, os.path.join(back, "cgroup.procs"), pid)


def _move_back(procs: str, pid: int) -> None:
    try:
        _write(procs, str(pid))
    except OSError:
        pass
