"""What a jail is asked for: Firecracker's jailer flags, checked once.

Every check that needs no change to the host is here, so that bad input is
refused before anything is created."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

ID_MAX = 64                          # Firecracker's jailer: at most 64 characters
DEFAULT_CHROOT_BASE = "/srv/jailer"
EXEC_NAME_MUST_CONTAIN = "firecracker"   # as Firecracker's jailer enforces
DEFAULT_NO_FILE = 2048               # Firecracker's jailer bounds no-file to this by default

# --resource-limit names (Firecracker's) -> resource.RLIMIT_* names
RESOURCE_LIMITS = {"fsize": "RLIMIT_FSIZE", "no-file": "RLIMIT_NOFILE"}


class JailError(Exception):
    """Bad input: one line naming the flag; the jail is not built (exit 2)."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class JailFailure(Exception):
    """The host refused a step after the input was accepted (exit 1)."""


@dataclass
class CgroupSetting:
    file: str                 # e.g. memory.limit_in_bytes
    value: str

    @property
    def controller(self) -> str:
        """The controller owning the file (`cgroup.*` files are the core's)."""
        return self.file.split(".", 1)[0]


@dataclass
class JailSpec:
    id: str
    exec_file: str            # as given (its last component names the jail's directory)
    uid: int
    gid: int
    chroot_base: str = DEFAULT_CHROOT_BASE
    netns: str | None = None
    cgroups: list[CgroupSetting] = field(default_factory=list)
    cgroup_version: int = 1
    parent_cgroup: str | None = None
    resource_limits: dict[str, int] = field(default_factory=dict)
    daemonize: bool = False
    new_pid_ns: bool = False
    monitor_args: list[str] = field(default_factory=list)

    @property
    def exec_name(self) -> str:
        return os.path.basename(self.exec_file)

    @property
    def jail_dir(self) -> str:
        """<chroot_base>/<exec_file_name>/<id>"""
        return os.path.join(self.chroot_base, self.exec_name, self.id)

    @property
    def root(self) -> str:
        return os.path.join(self.jail_dir, "root")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.root, f"{self.exec_name}.pid")

    @property
    def cgroup_parent(self) -> str:
        """Relative path of the parent of the jail's cgroup (default: the exec
        file's name, as Firecracker's jailer)."""
        return self.parent_cgroup if self.parent_cgroup is not None else self.exec_name

    def config_file(self) -> str | None:
        """The monitor's --config-file (a path inside the jail), if given."""
        args = self.monitor_args
        for i, arg in enumerate(args):
            if arg == "--config-file" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--config-file="):
                return arg.partition("=")[2]
        return None


def check_id(text: str) -> str:
    if not 0 < len(text) <= ID_MAX or not all(c.isascii() and (c.isalnum() or c == "-")
                                               for c in text):
        raise JailError(f"--id {text!r}", f"give 1-{ID_MAX} characters, each a letter, a "
                                          "digit or '-'")
    return text


def _check_exec_file(path: str) -> str:
    where = f"--exec-file {path}"
    if EXEC_NAME_MUST_CONTAIN not in os.path.basename(path):
        raise JailError(where, f"the file's name must contain {EXEC_NAME_MUST_CONTAIN!r} "
                               "(install or link kvmm-firecracker as `firecracker`)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise JailError(where, f"cannot use it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        raise JailError(where, "is not an executable file")
    return path


def _id_number(name: str, text) -> int:
    try:
        value = int(text, 10)
    except (TypeError, ValueError):
        raise JailError(f"{name} {text!r}", "give a number") from None
    if not 0 <= value < 2**32 - 1:
        raise JailError(f"{name} {text!r}", "give a number from 0 to 4294967294")
    return value


def _cgroup_setting(text: str) -> CgroupSetting:
    name, eq, value = text.partition("=")
    where = f"--cgroup {text!r}"
    if not eq or not value:
        raise JailError(where, "write FILE=VALUE (e.g. cpuset.cpus=0)")
    if "/" in name or name.startswith(".") or "." not in name or not name.isascii():
        raise JailError(where, "FILE is a cgroup file name such as memory.limit_in_bytes")
    if "\n" in value:
        raise JailError(where, "the value is one line")
    return CgroupSetting(name, value)


def _parent_cgroup(text: str) -> str:
    parts = text.strip("/").split("/")
    if os.path.isabs(text) or not text.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise JailError(f"--parent-cgroup {text!r}", "give a relative path below the "
                                                     "hierarchy's root, without '..'")
    return "/".join(parts)


def _resource_limits(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, eq, text = item.partition("=")
        where = f"--resource-limit {item!r}"
        if name not in RESOURCE_LIMITS or not eq:
            raise JailError(where, f"write RESOURCE=N with RESOURCE one of "
                                   f"{', '.join(RESOURCE_LIMITS)}")
        try:
            value = int(text, 10)
        except ValueError:
            raise JailError(where, "N is a whole number") from None
        if not 0 <= value < 2**63:
            raise JailError(where, "N is from 0 to 2**63-1")
        out[name] = value
    out.setdefault("no-file", DEFAULT_NO_FILE)
    return out


def _netns(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise JailError(f"--netns {path}", f"cannot use it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise JailError(f"--netns {path}", "give a network namespace file such as "
                                           "/var/run/netns/NAME")
    return path


def jail_spec(*, id, exec_file, uid, gid, chroot_base_dir=None, netns=None, cgroup=(),
              cgroup_version=None, parent_cgroup=None, resource_limit=(), daemonize=False,
              new_pid_ns=False, node=None, monitor_args=()) -> JailSpec:
    """The flags (text, as given) to a checked JailSpec; JailError names the flag."""
    for name, value in (("--id", id), ("--exec-file", exec_file), ("--uid", uid),
                        ("--gid", gid)):
        if value is None:
            raise JailError(name, "is required")
    base = DEFAULT_CHROOT_BASE if chroot_base_dir is None else chroot_base_dir
    if not os.path.isabs(base) or ".." in base.split("/"):
        raise JailError(f"--chroot-base-dir {base}", "give an absolute path without '..'")
    version = 1 if cgroup_version is None else cgroup_version
    if str(version) not in ("1", "2"):
        raise JailError(f"--cgroup-version {version}", "give 1 or 2")
    cgroups = [_cgroup_setting(c) for c in cgroup]
    if node is not None:
        cgroups += _node_cgroups(node)
    seen: set[str] = set()
    for c in cgroups:
        if c.file in seen:
            raise JailError(f"--cgroup {c.file}", "is given twice")
        seen.add(c.file)
    return JailSpec(id=check_id(id), exec_file=_check_exec_file(exec_file),
                    uid=_id_number("--uid", uid), gid=_id_number("--gid", gid),
                    chroot_base=os.path.normpath(base),
                    netns=None if netns is None else _netns(netns), cgroups=cgroups,
                    cgroup_version=int(version),
                    parent_cgroup=None if parent_cgroup is None else _parent_cgroup(parent_cgroup),
                    resource_limits=_resource_limits(list(resource_limit)),
                    daemonize=daemonize, new_pid_ns=new_pid_ns,
                    monitor_args=list(monitor_args))


def _node_cgroups(node: str) -> list[CgroupSetting]:
    """--node N (older jailers; still passed by some orchestrators): cpuset.mems=N
    and cpuset.cpus=the node's CPUs."""
    where = f"--node {node!r}"
    if not node.isdigit():
        raise JailError(where, "give a NUMA node number")
    path = f"/sys/devices/system/node/node{int(node)}/cpulist"
    try:
        with open(path) as f:
            cpus = f.read().strip()
    except OSError:
        raise JailError(where, f"this host has no NUMA node {int(node)}") from None
    return [CgroupSetting("cpuset.mems", str(int(node))), CgroupSetting("cpuset.cpus", cpus)]
