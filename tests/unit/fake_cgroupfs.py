"""An in-memory cgroupfs that keeps the kernel's rules, behind kvmm.quota.cgroup's
CgroupFs seam (Documentation/admin-guide/cgroup-v2.rst; kernel/cgroup/cgroup.c).

v2, as a real kernel answers:
- a cgroup's controllers are its parent's `cgroup.subtree_control` (the root's:
  what the kernel offers); "+c" for a controller not among them: ENOENT;
- "+c" in the `cgroup.subtree_control` of a non-root cgroup holding processes:
  EBUSY ("no internal processes"); "-c" while a child has c in its own
  subtree_control: EBUSY; a bad token: EINVAL; all tokens or none apply;
- a process cannot join a non-root cgroup whose subtree_control is not empty:
  EBUSY; an unknown pid: ESRCH;
- a controller's interface files exist only where it is enabled (memory.max,
  cpu.max are absent at the root and where the parent does not hand it down),
  so a write to one fails ENOENT (writes never create files); disabling a
  controller drops its settings below;
- memory.max/high/low/min/swap.max take "max" or bytes (K/M/G suffixes), kept
  rounded down to the page; cpu.max takes "$MAX [$PERIOD]", quota and period
  at least 1000 us, period at most 1 s; anything else EINVAL; read-only files
  EACCES;
- rmdir of the root, of a cgroup with children or with processes: EBUSY.
v1: one tree per controller (`<root>/memory`, `<root>/cpu`), no
internal-process rule, memory.limit_in_bytes / cpu.cfs_{period,quota}_us
checked as the kernel does, rmdir as above.

/proc/self/cgroup (`proc_cgroup`) is answered for `self_pid` from the current
state, as the kernel's is.
"""
from __future__ import annotations

import errno
import os
import re

from kvmm.quota.cgroup import CgroupFs

PAGE = 4096
CPU_QUOTA_MIN_US = 1_000                # kernel/sched/core.c min_cfs_quota_period
CPU_PERIOD_MAX_US = 1_000_000           # max_cfs_quota_period
V1_HIERARCHIES = {"memory": 4, "cpu": 3}   # name -> hierarchy id in /proc/self/cgroup
V2_MEMORY_FILES = ("memory.current", "memory.min", "memory.low", "memory.high", "memory.max",
                   "memory.events", "memory.stat")
V2_CPU_FILES = ("cpu.max", "cpu.weight")
V2_READ_ONLY = {"cgroup.controllers", "cgroup.events", "memory.current", "memory.events",
                "memory.stat", "memory.peak", "memory.swap.current", "cpu.stat"}
V1_FILES = {"memory": ("memory.limit_in_bytes", "memory.usage_in_bytes",
                       "memory.max_usage_in_bytes", "memory.failcnt"),
            "cpu": ("cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares", "cpu.stat",
                    "cpuacct.usage")}
V1_READ_ONLY = {"memory.usage_in_bytes", "cpu.stat"}
V1_UNLIMITED = 0x7FFFFFFFFFFFF000       # memory.limit_in_bytes when not limited


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _memparse(text: str, path: str) -> int | None:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip(), re.I)
    if text.strip() == "max":
        return None
    if not m:
        raise _err(errno.EINVAL, path)
    return (int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]) \
        // PAGE * PAGE


class Cgroup:
    def __init__(self, name: str, parent: Cgroup | None, tree: str = ""):
        self.name = name
        self.parent = parent
        self.tree = tree                       # v1: the hierarchy ("memory", "cpu")
        self.children: dict[str, Cgroup] = {}
        self.procs: set[int] = set()
        self.subtree_control: list[str] = []
        self.values: dict[str, str] = {}

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def path(self) -> str:
        return "/" if self.is_root else os.path.join(self.parent.path(), self.name)


class FakeCgroupKernel(CgroupFs):
    def __init__(self, version: str = "v2", controllers=("cpu", "memory", "pids"),
                 root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup",
                 self_pid: int = 4242, swap: bool = True, peak: bool = True):
        self.version = version
        self.offered = list(controllers)
        self.root = root
        self.proc_cgroup = proc_cgroup
        self.self_pid = self_pid
        self.swap = swap
        self.peak = peak
        self.log: list[tuple[str, str, str]] = []      # (op, path, text) of every change
        if version == "v2":
            self.trees = {"": Cgroup("", None)}
        else:
            self.trees = {name: Cgroup("", None, name) for name in V1_HIERARCHIES}
        self.spawn(self_pid, "/")

    # The kernel side: processes, and setting read-only values. ----------------------
    def spawn(self, pid: int, path: str, tree: str | None = None) -> None:
        """A process `pid` in cgroup `path` (of every v1 tree unless `tree`)."""
        for name, top in self.trees.items():
            if tree is None or name == tree:
                for cg in self._all(top):
                    cg.procs.discard(pid)
                self._find(top, path).procs.add(pid)

    def mkcgroup(self, path: str, tree: str = "") -> Cgroup:
        """Make cgroup `path` and its missing ancestors (as an administrator would)."""
        node = self.trees[tree]
        for part in [p for p in path.split("/") if p]:
            node = node.children.setdefault(part, Cgroup(part, node, tree))
        return node

    def cgroup(self, path: str, tree: str = "") -> Cgroup:
        return self._find(self.trees[tree], path)

    def where(self, pid: int, tree: str = "") -> str:
        return next(cg.path() for cg in self._all(self.trees[tree]) if pid in cg.procs)

    def set_value(self, path: str, text: str) -> None:
        node, name = self._resolve(path)
        node.values[name] = text

    @staticmethod
    def _all(top: Cgroup):
        yield top
        for child in top.children.values():
            yield from FakeCgroupKernel._all(child)

    @staticmethod
    def _find(top: Cgroup, path: str) -> Cgroup:
        node = top
        for part in [p for p in path.split("/") if p]:
            node = node.children[part]
        return node

    # What a cgroup shows. ------------------------------------------------------------
    def controllers(self, cg: Cgroup) -> list[str]:
        if self.version == "v1":
            return [cg.tree]
        return list(self.offered) if cg.is_root else list(cg.parent.subtree_control)

    def files(self, cg: Cgroup) -> list[str]:
        names = ["cgroup.procs"]
        if self.version == "v1":
            return names + list(V1_FILES[cg.tree])
        names += ["cgroup.controllers", "cgroup.subtree_control", "cpu.stat"]
        if cg.is_root:
            return names
        names += ["cgroup.events", "cgroup.type"]
        have = self.controllers(cg)
        if "memory" in have:
            names += V2_MEMORY_FILES
            names += ["memory.peak"] if self.peak else []
            names += ["memory.swap.current", "memory.swap.max"] if self.swap else []
        if "cpu" in have:
            names += V2_CPU_FILES
        return names

    def _default(self, cg: Cgroup, name: str) -> str:
        if name == "cgroup.procs":
            return "".join(f"{p}\n" for p in sorted(cg.procs))
        if name == "cgroup.controllers":
            return " ".join(self.controllers(cg)) + "\n"
        if name == "cgroup.subtree_control":
            return " ".join(cg.subtree_control) + "\n"
        if name == "cgroup.events":
            return f"populated {int(bool(cg.procs))}\nfrozen 0\n"
        if name == "cgroup.type":
            return "domain\n"
        if name == "memory.events":
            return "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"
        if name in ("memory.max", "memory.high", "memory.swap.max"):
            return "max\n"
        if name == "cpu.max":
            return "max 100000\n"
        if name == "cpu.weight":
            return "100\n"
        if name == "cpu.stat" and self.version == "v2":
            return ("usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                    "nr_throttled 0\nthrottled_usec 0\n")
        if name == "cpu.stat":
            return "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"
        if name == "cpu.cfs_period_us":
            return "100000\n"
        if name == "cpu.cfs_quota_us":
            return "-1\n"
        if name == "memory.limit_in_bytes":
            return f"{V1_UNLIMITED}\n"
        return "0\n"

    def _resolve(self, path: str) -> tuple[Cgroup, str | None]:
        """(cgroup, file name or None for the directory); ENOENT if absent."""
        rel = os.path.relpath(path, self.root)
        if rel.startswith(".."):
            raise _err(errno.ENOENT, path)
        parts = [] if rel == "." else rel.split("/")
        if self.version == "v1":
            if not parts or parts[0] not in self.trees:
                raise _err(errno.ENOENT, path)
            node, parts = self.trees[parts[0]], parts[1:]
        else:
            node = self.trees[""]
        for i, part in enumerate(parts):
            if part in node.children:
                node = node.children[part]
            elif i == len(parts) - 1 and part in self.files(node):
                return node, part
            else:
                raise _err(errno.ENOENT, path)
        return node, None

    # CgroupFs. -----------------------------------------------------------------------
    def read(self, path: str) -> str:
        if path == self.proc_cgroup:
            return self._proc_cgroup()
        node, name = self._resolve(path)
        if name is None:
            raise _err(errno.EISDIR, path)
        if name in ("cgroup.procs", "cgroup.controllers", "cgroup.subtree_control",
                    "cgroup.events"):
            return self._default(node, name)
        return node.values.get(name, self._default(node, name))

    def _proc_cgroup(self) -> str:
        if self.version == "v2":
            return f"0::{self.where(self.self_pid)}\n"
        return "".join(f"{hid}:{name}:{self.where(self.self_pid, name)}\n"
                       for name, hid in V1_HIERARCHIES.items() if name in self.trees) + "0::/\n"

    def exists(self, path: str) -> bool:
        if path == self.proc_cgroup:
            return True
        try:
            self._resolve(path)
        except OSError:
            return False
        return True

    def mkdir(self, path: str) -> None:
        parent, name = self._resolve(os.path.dirname(path))
        base = os.path.basename(path)
        if name is not None:
            raise _err(errno.ENOTDIR, path)
        if base in parent.children or base in self.files(parent):
            raise _err(errno.EEXIST, path)
        parent.children[base] = Cgroup(base, parent, parent.tree)
        self.log.append(("mkdir", path, ""))

    def rmdir(self, path: str) -> None:
        node, name = self._resolve(path)
        if name is not None:
            raise _err(errno.ENOTDIR, path)
        if node.is_root or node.children or node.procs:
            raise _err(errno.EBUSY, path)
        del node.parent.children[node.name]
        self.log.append(("rmdir", path, ""))

    def write(self, path: str, text: str) -> None:
        node, name = self._resolve(path)
        if name is None:
            raise _err(errno.EISDIR, path)
        if name in V2_READ_ONLY or name in V1_READ_ONLY:
            raise _err(errno.EACCES, path)
        if name == "cgroup.procs":
            self._migrate(node, text, path)
        elif name == "cgroup.subtree_control":
            self._subtree_control(node, text, path)
        elif name in ("memory.max", "memory.high", "memory.low", "memory.min",
                      "memory.swap.max"):
            value = _memparse(text, path)
            node.values[name] = "max\n" if value is None else f"{value}\n"
        elif name == "cpu.max":
            node.values[name] = self._cpu_max(node, text, path)
        elif name == "memory.limit_in_bytes":
            value = V1_UNLIMITED if text.strip() == "-1" else _memparse(text, path)
            if value is None:
                raise _err(errno.EINVAL, path)
            node.values[name] = f"{value}\n"
        elif name in ("cpu.cfs_period_us", "cpu.cfs_quota_us"):
            node.values[name] = self._cfs(name, text, path)
        elif name == "cpu.weight":
            if not text.strip().isdigit() or not 1 <= int(text) <= 10_000:
                raise _err(errno.EINVAL, path)
            node.values[name] = f"{int(text)}\n"
        else:
            raise _err(errno.EINVAL, path)
        self.log.append(("write", path, text))

    def _migrate(self, node: Cgroup, text: str, path: str) -> None:
        try:
            pid = int(text.strip())
        except ValueError:
            raise _err(errno.EINVAL, path) from None
        top = node
        while top.parent is not None:
            top = top.parent
        old = next((cg for cg in self._all(top) if pid in cg.procs), None)
        if old is None:
            raise _err(errno.ESRCH, path)
        if self.version == "v2" and not node.is_root and node.subtree_control:
            raise _err(errno.EBUSY, path)        # no internal processes
        old.procs.discard(pid)
        node.procs.add(pid)

    def _subtree_control(self, node: Cgroup, text: str, path: str) -> None:
        if self.version != "v2":
            raise _err(errno.EINVAL, path)
        enable, disable = [], []
        for token in text.split():
            if token[:1] not in "+-" or len(token) < 2:
                raise _err(errno.EINVAL, path)
            if token[1:] not in self.controllers(node):
                raise _err(errno.ENOENT, path)
            (enable if token[0] == "+" else disable).append(token[1:])
        if enable and not node.is_root and node.procs:
            raise _err(errno.EBUSY, path)            # no internal processes
        for c in disable:
            if any(c in child.subtree_control for child in node.children.values()):
                raise _err(errno.EBUSY, path)
        for c in enable:
            if c not in node.subtree_control:
                node.subtree_control.append(c)
        for c in disable:
            if c in node.subtree_control:
                node.subtree_control.remove(c)
                for child in node.children.values():     # its settings go with it
                    for f in list(child.values):
                        if f.startswith(f"{c}."):
                            del child.values[f]

    def _cpu_max(self, node: Cgroup, text: str, path: str) -> str:
        words = text.split()
        if not 1 <= len(words) <= 2:
            raise _err(errno.EINVAL, path)
        period = int(self.read(path).split()[1])
        if len(words) == 2:
            if not words[1].isdigit():
                raise _err(errno.EINVAL, path)
            period = int(words[1])
        quota = words[0]
        if quota != "max" and not quota.isdigit():
            raise _err(errno.EINVAL, path)
        if not CPU_QUOTA_MIN_US <= period <= CPU_PERIOD_MAX_US or (
                quota != "max" and int(quota) < CPU_QUOTA_MIN_US):
            raise _err(errno.EINVAL, path)
        return f"{quota} {period}\n"

    def _cfs(self, name: str, text: str, path: str) -> str:
        try:
            value = int(text.strip())
        except ValueError:
            raise _err(errno.EINVAL, path) from None
        if name == "cpu.cfs_quota_us":
            ok = value == -1 or value >= CPU_QUOTA_MIN_US
        else:
            ok = CPU_QUOTA_MIN_US <= value <= CPU_PERIOD_MAX_US
        if not ok:
            raise _err(errno.EINVAL, path)
        return f"{value}\n"
