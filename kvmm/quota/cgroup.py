"""Per-guest cgroups for the monitor process: a memory limit (guest RAM plus an
overhead allowance) and an optional CPU quota, on cgroup v1 or v2
(Documentation/admin-guide/cgroup-v1/memory.rst, cgroup-v2.rst).

The guest's cgroup is made as a child of the cgroup the monitor already runs
in (read from /proc/self/cgroup); only the monitor itself is moved into it,
never another process, and it is removed when the guest ends.
"""
from __future__ import annotations

import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"
V1_MEMORY, V1_CPU = "memory", "cpu"
CPU_PERIOD_US = 100_000


class CgroupError(OSError):
    """A cgroup that cannot be made or configured; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror


def _write(path: str, value) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise CgroupError(e.errno or 0, f"cannot write {value!r} to {path}: "
                                        f"{e.strerror}") from None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def own_cgroups(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """Controller name ("" for the v2 hierarchy) -> this process's cgroup path."""
    out = {}
    for line in _read(proc_cgroup).splitlines():
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def detect(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> str:
    """'v1' when the memory controller is mounted on its own hierarchy, 'v2'
    when the unified hierarchy has it, else ''."""
    own = own_cgroups(proc_cgroup)
    if "memory" in own and os.path.isfile(os.path.join(root, V1_MEMORY, "cgroup.procs")):
        return "v1"
    for base in (root, os.path.join(root, "unified")):
        controllers = os.path.join(base, "cgroup.controllers")
        if os.path.isfile(controllers) and "memory" in _read(controllers).split():
            return "v2"
    return ""


class GuestCgroup:
    """The monitor's own cgroup(s) for one guest. `close()` moves the monitor
    back to where it was and removes them."""

    def __init__(self, name: str, memory_limit: int | None, cpu_quota: float | None = None,
                 root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup",
                 pid: int | None = None):
        self.root = root
        self.pid = os.getpid() if pid is None else pid
        self.version = detect(root, proc_cgroup)
        if not self.version:
            raise CgroupError(0, "no cgroup memory controller is available (neither a v1 "
                                 "memory hierarchy nor a v2 one with memory enabled); run "
                                 "without --mem-overhead-limit/--cpu-quota or enable it")
        self.own = own_cgroups(proc_cgroup)
        self.leaf = f"kvmm-{self.pid}-{name}"
        self.dirs: list[tuple[str, str]] = []      # (new cgroup dir, the one we came from)
        try:
            if self.version == "v1":
                self._setup_v1(memory_limit, cpu_quota)
            else:
                self._setup_v2(memory_limit, cpu_quota)
        except BaseException:
            self.close()
            raise

    def _make(self, parent: str) -> str:
        path = os.path.join(parent, self.leaf)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(e.errno or 0, f"cannot create cgroup {path}: {e.strerror} "
                                            "(kvmm needs to own its cgroup: run as root or "
                                            "in a delegated cgroup)") from None
        return path

    def _enter(self, path: str, parent: str) -> None:
        _write(os.path.join(path, "cgroup.procs"), self.pid)
        self.dirs.append((path, parent))

    def _setup_v1(self, memory_limit, cpu_quota) -> None:
        if memory_limit is not None:
            parent = os.path.join(self.root, V1_MEMORY, self.own["memory"].lstrip("/"))
            path = self._make(parent)
            self.dirs.append((path, parent))
            _write(os.path.join(path, "memory.limit_in_bytes"), memory_limit)
            self.dirs.pop()
            self._enter(path, parent)
        if cpu_quota is not None:
            if "cpu" not in self.own:
                raise CgroupError(0, "the cgroup v1 cpu controller is not mounted; run "
                                     "without --cpu-quota")
            parent = os.path.join(self.root, V1_CPU, self.own["cpu"].lstrip("/"))
            path = self._make(parent)
            self.dirs.append((path, parent))
            _write(os.path.join(path, "cpu.cfs_period_us"), CPU_PERIOD_US)
            _write(os.path.join(path, "cpu.cfs_quota_us"), int(cpu_quota * CPU_PERIOD_US))
            self.dirs.pop()
            self._enter(path, parent)

    def _setup_v2(self, memory_limit, cpu_quota) -> None:
        base = self.root
        if not os.path.isfile(os.path.join(base, "cgroup.controllers")):
            base = os.path.join(self.root, "unified")
        parent = os.path.join(base, self.own.get("", "/").lstrip("/"))
        wanted = []
        if memory_limit is not None:
            wanted.append("memory")
        if cpu_quota is not None:
            wanted.append("cpu")
        subtree = os.path.join(parent, "cgroup.subtree_control")
        enabled = _read(subtree).split() if os.path.exists(subtree) else []
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(subtree, " ".join(f"+{c}" for c in missing))
        path = self._make(parent)
        self.dirs.append((path, parent))
        if memory_limit is not None:
            _write(os.path.join(path, "memory.max"), memory_limit)
            _write(os.path.join(path, "memory.swap.max"), 0) if os.path.exists(
                os.path.join(path, "memory.swap.max")) else None
        if cpu_quota is not None:
            _write(os.path.join(path, "cpu.max"),
                   f"{int(cpu_quota * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        self.dirs.pop()
        self._enter(path, parent)

    def memory_usage(self) -> dict:
        """Current and peak usage of the memory cgroup, in bytes."""
        for path, _ in self.dirs:
            if self.version == "v1" and os.path.exists(os.path.join(path, "memory.usage_in_bytes")):
                return {"usage": int(_read(os.path.join(path, "memory.usage_in_bytes"))),
                        "peak": int(_read(os.path.join(path, "memory.max_usage_in_bytes"))),
                        "limit": int(_read(os.path.join(path, "memory.limit_in_bytes"))),
                        "failcnt": int(_read(os.path.join(path, "memory.failcnt")))}
            if self.version == "v2" and os.path.exists(os.path.join(path, "memory.current")):
                peak_file = os.path.join(path, "memory.peak")
                return {"usage": int(_read(os.path.join(path, "memory.current"))),
                        "peak": int(_read(peak_file)) if os.path.exists(peak_file) else None,
                        "limit": _read(os.path.join(path, "memory.max"))}
        return {}

    def close(self) -> None:
        """Move back to the original cgroups and remove ours (retrying briefly
        while the kernel finishes moving the process)."""
        while self.dirs:
            path, parent = self.dirs.pop()
            try:
                _write(os.path.join(parent, "cgroup.procs"), self.pid)
            except CgroupError:
                pass
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)

    def __enter__(self) -> GuestCgroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
