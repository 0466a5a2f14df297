"""Per-guest cgroups for the monitor process: a memory limit (guest RAM plus an
overhead allowance) and an optional CPU quota, on cgroup v1 or v2
(Documentation/admin-guide/cgroup-v1/memory.rst, Documentation/admin-guide/cgroup-v2.rst).

The monitor moves only itself, never another process, and removes what it
made when the guest ends.

v1: one new cgroup per hierarchy (memory, cpu), a child of the one the monitor
runs in (/proc/self/cgroup), with `memory.limit_in_bytes` and
`cpu.cfs_quota_us`/`cpu.cfs_period_us`.

v2 follows the kernel's rules (cgroup-v2.rst "Top-down Constraint" and "No
Internal Process Constraint"):
- a controller reaches a cgroup only when it is enabled in the
  `cgroup.subtree_control` of every ancestor; kvmm enables it only in the
  cgroup it runs in, never above, and says which ancestor lacks it;
- a non-root cgroup that holds processes cannot enable controllers for its
  children, and no process can join a non-root cgroup that has them enabled.
So the monitor first moves itself into a leaf `<own>/kvmm-<pid>-<name>` and
only then, its own cgroup now empty, enables the controllers there
("nested"). When its cgroup holds other processes too (a login session's
scope) it cannot do that; if the parent already hands the controllers down
the leaf becomes a sibling of its cgroup instead ("sibling"), else the error
says what to do (`systemd-run --scope -p Delegate=yes` gives kvmm a cgroup of
its own). At exit: disable what kvmm enabled (so the cgroup can take a
process again), move back, and rmdir the leaf (the kernel refuses while it is
not empty).
"""
from __future__ import annotations

import contextlib
import errno
import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"
V1_MEMORY, V1_CPU = "memory", "cpu"
CPU_PERIOD_US = 100_000
CPU_QUOTA_MIN_US = 1_000           # kernel/sched/core.c: min_cfs_quota_period, 1 ms
V2_MAX = "max"                     # "no limit" in memory.max, memory.high, cpu.max
# The option that asks for each controller, for the error messages.
OPTION = {"memory": "--mem-overhead-limit", "cpu": "--cpu-quota"}
RMDIR_TRIES = 50                   # x 10 ms: the kernel may still be moving us out


class CgroupError(OSError):
    """A cgroup that cannot be made or configured; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror


class CgroupFs:
    """The cgroup file system as GuestCgroup uses it; the unit tests put a fake
    kernel behind the same five calls. Writes never create a file (a control
    file that is absent means its controller is not enabled there) and are a
    single write(2), as cgroupfs wants one value per write."""

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    def write(self, path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)


# Parsing the kernel's formats (cgroup-v2.rst "Interface Files"). ------------------
def parse_max(text: str) -> int | None:
    """memory.max / memory.high / memory.swap.max: bytes, or "max" (None)."""
    text = text.strip()
    return None if text == V2_MAX else int(text)


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """cpu.max "$MAX $PERIOD" -> (quota in us or None for "max", period in us)."""
    quota, period = text.split()
    return parse_max(quota), int(period)


def format_cpu_max(quota_us: int | None, period_us: int = CPU_PERIOD_US) -> str:
    return f"{V2_MAX if quota_us is None else quota_us} {period_us}"


def parse_flat_keyed(text: str) -> dict[str, int]:
    """memory.events, cpu.stat: "key value" lines."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def own_cgroups(proc_cgroup: str = "/proc/self/cgroup", fs: CgroupFs | None = None
                ) -> dict[str, str]:
    """Controller name ("" for the v2 hierarchy) -> this process's cgroup path."""
    fs = fs or CgroupFs()
    out = {}
    for line in fs.read(proc_cgroup).strip().splitlines():
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def v2_mount(root: str = CGROUP_ROOT, fs: CgroupFs | None = None) -> str | None:
    """Where the v2 hierarchy is: `root` itself (a pure v2 host) or
    `root`/unified (a hybrid one), else None."""
    fs = fs or CgroupFs()
    for base in (root, os.path.join(root, "unified")):
        if fs.exists(os.path.join(base, "cgroup.controllers")):
            return base
    return None


def detect(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup",
           fs: CgroupFs | None = None) -> str:
    """'v1' when the memory or cpu controller has a v1 hierarchy of its own
    that this process is in, 'v2' when there is a v2 hierarchy offering
    memory or cpu, else ''."""
    fs = fs or CgroupFs()
    own = own_cgroups(proc_cgroup, fs)
    if any(c in own and fs.exists(os.path.join(root, c, "cgroup.procs"))
           for c in (V1_MEMORY, V1_CPU)):
        return "v1"
    base = v2_mount(root, fs)
    if base is not None and {"memory", "cpu"} & set(
            fs.read(os.path.join(base, "cgroup.controllers")).split()):
        return "v2"
    return ""


class GuestCgroup:
    """The monitor's own cgroup(s) for one guest. `close()` moves the monitor
    back to where it was and removes them.

    `path` is the cgroup the monitor sits in (v2; the memory one on v1) and
    `placement` how it was made ("nested" under the monitor's cgroup, or
    "sibling" of it)."""

    def __init__(self, name: str, memory_limit: int | None, cpu_quota: float | None = None,
                 root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup",
                 pid: int | None = None, fs: CgroupFs | None = None):
        self.root = root
        self.fs = fs or CgroupFs()
        self.pid = os.getpid() if pid is None else pid
        self.leaf = f"kvmm-{self.pid}-{name}"
        self.path: str | None = None
        self.placement = "nested"
        self.memory_path: str | None = None
        self.cpu_path: str | None = None
        self.entered = time.monotonic()
        self._entered = False
        self._undo = contextlib.ExitStack()
        quota_us = None
        if cpu_quota is not None:
            quota_us = int(cpu_quota * CPU_PERIOD_US)
            if quota_us < CPU_QUOTA_MIN_US:
                raise CgroupError(errno.EINVAL, f"--cpu-quota {cpu_quota} is below the "
                                  f"kernel's minimum of {CPU_QUOTA_MIN_US / CPU_PERIOD_US} "
                                  f"CPUs ({CPU_QUOTA_MIN_US} us per {CPU_PERIOD_US} us)")
        self.version = detect(root, proc_cgroup, self.fs)
        if not self.version:
            raise CgroupError(errno.ENOENT, f"no cgroup memory or cpu controller under {root} "
                              "(neither a v1 hierarchy nor a v2 one offering them); run "
                              "without --mem-overhead-limit/--cpu-quota or mount cgroups")
        self.own = own_cgroups(proc_cgroup, self.fs)
        try:
            if self.version == "v1":
                self._setup_v1(memory_limit, quota_us)
            else:
                self._setup_v2(memory_limit, quota_us)
        except BaseException:
            self.close()
            raise

    # Small steps, each pushing its own undo. ------------------------------------
    def _write(self, path: str, value) -> None:
        try:
            self.fs.write(path, str(value))
        except OSError as e:
            hint = ""
            if e.errno == errno.ENOENT:
                hint = " (the file is absent: its controller is not enabled in this cgroup)"
            raise CgroupError(e.errno or 0, f"cannot write {str(value)!r} to {path}: "
                              f"{e.strerror or e}{hint}") from None

    def _read(self, path: str) -> str:
        return self.fs.read(path).strip()

    def _make(self, parent: str) -> str:
        path = os.path.join(parent, self.leaf)
        try:
            self.fs.mkdir(path)
        except FileExistsError:
            pass            # left by an earlier monitor with our pid: reuse it
        except OSError as e:
            raise CgroupError(e.errno or 0, f"cannot create cgroup {path}: {e.strerror} "
                              "(kvmm needs to own its cgroup: run as root or in a "
                              "delegated cgroup)") from None
        self._undo.callback(self._remove, path)
        return path

    def _enter(self, path: str, came_from: str) -> None:
        self._write(os.path.join(path, "cgroup.procs"), self.pid)
        self.entered = time.monotonic()
        self._entered = True
        self._undo.callback(self._move, came_from)

    def _move(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self.fs.write(os.path.join(path, "cgroup.procs"), str(self.pid))

    def _remove(self, path: str) -> None:
        """rmdir, retrying briefly: the kernel refuses (EBUSY) while the
        cgroup still has a process or a child."""
        for _ in range(RMDIR_TRIES):
            try:
                self.fs.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)

    def _procs(self, path: str) -> set[int]:
        return {int(p) for p in self._read(os.path.join(path, "cgroup.procs")).split()}

    # v1. -------------------------------------------------------------------------
    def _v1_parent(self, controller: str, option: str) -> str:
        if controller not in self.own or not self.fs.exists(
                os.path.join(self.root, controller, "cgroup.procs")):
            raise CgroupError(errno.ENOENT, f"the cgroup v1 {controller} controller is not "
                              f"mounted at {os.path.join(self.root, controller)}; mount it "
                              f"or run without {option}")
        return os.path.join(self.root, controller, self.own[controller].lstrip("/"))

    def _setup_v1(self, memory_limit: int | None, quota_us: int | None) -> None:
        if memory_limit is not None:
            parent = self._v1_parent(V1_MEMORY, OPTION["memory"])
            path = self._make(parent)
            self._write(os.path.join(path, "memory.limit_in_bytes"), memory_limit)
            self._enter(path, parent)
            self.path = self.memory_path = path
        if quota_us is not None:
            parent = self._v1_parent(V1_CPU, OPTION["cpu"])
            path = self._make(parent)
            self._write(os.path.join(path, "cpu.cfs_period_us"), CPU_PERIOD_US)
            self._write(os.path.join(path, "cpu.cfs_quota_us"), quota_us)
            self._enter(path, parent)
            self.cpu_path = path
            self.path = self.path or path

    # v2. -------------------------------------------------------------------------
    def _check_top_down(self, base: str, own: str, wanted: list[str]) -> None:
        """Each wanted controller must be offered by the kernel and enabled in
        every ancestor's subtree_control down to `own`'s parent."""
        offered = self._read(os.path.join(base, "cgroup.controllers")).split()
        for c in wanted:
            if c not in offered:
                raise CgroupError(errno.ENOENT, f"the kernel's cgroup v2 hierarchy at {base} "
                                  f"has no {c} controller (it is bound to a v1 hierarchy or "
                                  f"disabled on the kernel command line: see "
                                  f"{os.path.join(base, 'cgroup.controllers')}); run without "
                                  f"{OPTION[c]} or make it available")
        parts = [p for p in own.split("/") if p]
        for depth in range(len(parts)):
            ancestor = os.path.join(base, *parts[:depth])
            enabled = self._read(os.path.join(ancestor, "cgroup.subtree_control")).split()
            for c in wanted:
                if c not in enabled:
                    raise CgroupError(errno.ENOENT, _not_delegated(c, ancestor, own))

    def _setup_v2(self, memory_limit: int | None, quota_us: int | None) -> None:
        base = v2_mount(self.root, self.fs)
        own = self.own.get("", "/")
        wanted = [c for c, v in (("memory", memory_limit), ("cpu", quota_us)) if v is not None]
        here = os.path.join(base, own.lstrip("/"))
        is_root = own.strip("/") == ""
        enabled = self._read(os.path.join(here, "cgroup.subtree_control")).split()
        missing = [c for c in wanted if c not in enabled]
        others = self._procs(here) - {self.pid}
        if missing and others and not is_root:
            # No internal processes: `here` cannot hand controllers down while
            # other processes are in it, and those are not kvmm's to move.
            self._setup_v2_sibling(base, own, here, wanted, others)
        else:
            self._check_top_down(base, own, wanted)
            self._setup_v2_nested(here, missing, is_root)
        self._limit_v2(memory_limit, quota_us)
        if not self._entered:
            self._enter(self.path, here)

    def _setup_v2_nested(self, here: str, missing: list[str], is_root: bool) -> None:
        path = self._make(here)
        self.path = path
        if not missing:
            return
        if not is_root:
            # `here` must hold no process before it may enable controllers:
            # the monitor (its only one) moves into the leaf first.
            self._enter(path, here)
        try:
            self.fs.write(os.path.join(here, "cgroup.subtree_control"),
                          " ".join(f"+{c}" for c in missing))
        except OSError as e:
            raise CgroupError(e.errno or 0, f"cannot enable {', '.join(missing)} in "
                              f"{here}/cgroup.subtree_control: {e.strerror}"
                              + (" (a process joined that cgroup meanwhile)"
                                 if e.errno == errno.EBUSY else "")) from None
        if not is_root:
            # A non-root cgroup with controllers enabled takes no process:
            # disable them before moving back (this undo runs before the move).
            self._undo.callback(self._disable, here, missing)

    def _setup_v2_sibling(self, base: str, own: str, here: str, wanted: list[str],
                          others: set[int]) -> None:
        parent_own = os.path.dirname(own.rstrip("/")) or "/"
        parent = os.path.join(base, parent_own.lstrip("/"))
        enabled = self._read(os.path.join(parent, "cgroup.subtree_control")).split()
        lacking = [c for c in wanted if c not in enabled]
        if lacking:
            shown = ", ".join(str(p) for p in sorted(others)[:5])
            raise CgroupError(errno.EBUSY, f"cgroup v2 cannot give {', '.join(lacking)} to "
                              f"a cgroup of kvmm's: its cgroup {own} holds other processes "
                              f"({shown}), so it may not enable controllers for children, "
                              f"and its parent {parent_own} does not hand {', '.join(lacking)} "
                              f"down (cgroup.subtree_control); start kvmm in a cgroup of its "
                              f"own (`systemd-run --scope -p Delegate=yes -- kvmm ...`), or "
                              f"run without {' / '.join(OPTION[c] for c in lacking)}")
        self._check_top_down(base, parent_own, wanted)
        self.path = self._make(parent)
        self.placement = "sibling"

    def _disable(self, path: str, controllers: list[str]) -> None:
        with contextlib.suppress(OSError):
            self.fs.write(os.path.join(path, "cgroup.subtree_control"),
                          " ".join(f"-{c}" for c in controllers))

    def _limit_v2(self, memory_limit: int | None, quota_us: int | None) -> None:
        if memory_limit is not None:
            self._write(os.path.join(self.path, "memory.max"), memory_limit)
            # Swapped-out guest RAM would not count against memory.max.
            swap = os.path.join(self.path, "memory.swap.max")
            if self.fs.exists(swap):
                self._write(swap, 0)
            self.memory_path = self.path
        if quota_us is not None:
            self._write(os.path.join(self.path, "cpu.max"), format_cpu_max(quota_us))
            self.cpu_path = self.path

    # Reading back. -----------------------------------------------------------------
    def limits(self) -> dict:
        """What the kernel holds now, parsed: memory_max (bytes or None for
        "max"), cpu_max ((quota us or None, period us)); v2 only, else {}."""
        if self.version != "v2" or self.path is None:
            return {}
        out = {}
        for name, parse in (("memory.max", parse_max), ("cpu.max", parse_cpu_max)):
            f = os.path.join(self.path, name)
            if self.fs.exists(f):
                out[name.replace(".", "_")] = parse(self._read(f))
        return out

    def memory_usage(self) -> dict:
        """Usage, peak and limit of the memory cgroup in bytes (limit None when
        unlimited; peak None where the kernel has no memory.peak, before 5.19),
        and how often the limit was hit (failcnt)."""
        path = self.memory_path
        if path is None:
            return {}
        at = lambda name: os.path.join(path, name)  # noqa: E731
        if self.version == "v1":
            return {"version": "v1", "path": path,
                    "usage": int(self._read(at("memory.usage_in_bytes"))),
                    "peak": int(self._read(at("memory.max_usage_in_bytes"))),
                    "limit": int(self._read(at("memory.limit_in_bytes"))),
                    "failcnt": int(self._read(at("memory.failcnt")))}
        if not self.fs.exists(at("memory.current")):
            return {}
        events = parse_flat_keyed(self._read(at("memory.events"))) \
            if self.fs.exists(at("memory.events")) else {}
        return {"version": "v2", "path": path,
                "usage": int(self._read(at("memory.current"))),
                "peak": int(self._read(at("memory.peak")))
                if self.fs.exists(at("memory.peak")) else None,
                "limit": parse_max(self._read(at("memory.max"))),
                "high": parse_max(self._read(at("memory.high")))
                if self.fs.exists(at("memory.high")) else None,
                "failcnt": events.get("max", 0), "oom_kill": events.get("oom_kill", 0)}

    def cpu_usage(self) -> dict:
        """CPU time the cgroup used since the monitor entered it, and how often
        its quota throttled it (v2 cpu.stat; v1 cpuacct.usage and cpu.stat of
        the cpu,cpuacct hierarchy): the measure of a quota, which the
        process's own CPU time is not (it includes start-up before entering)."""
        if self.cpu_path is None:
            return {}
        stat_file = os.path.join(self.cpu_path, "cpu.stat")
        stat = parse_flat_keyed(self._read(stat_file)) if self.fs.exists(stat_file) else {}
        out = {"wall": time.monotonic() - self.entered,
               "nr_periods": stat.get("nr_periods", 0),
               "nr_throttled": stat.get("nr_throttled", 0)}
        if self.version == "v2":
            out["seconds"] = stat.get("usage_usec", 0) / 1e6
            out["throttled_seconds"] = stat.get("throttled_usec", 0) / 1e6
        else:
            usage = os.path.join(self.cpu_path, "cpuacct.usage")
            if self.fs.exists(usage):
                out["seconds"] = int(self._read(usage)) / 1e9
            out["throttled_seconds"] = stat.get("throttled_time", 0) / 1e9
        return out

    def close(self) -> None:
        """Undo in reverse: disable the controllers kvmm enabled, move back,
        remove the cgroups. Safe to call twice; never raises."""
        self._undo.close()

    def __enter__(self) -> GuestCgroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _not_delegated(controller: str, ancestor: str, own: str) -> str:
    ctl = os.path.join(ancestor, "cgroup.subtree_control")
    return (f"the cgroup v2 {controller} controller is not enabled in {ctl}, so no cgroup "
            f"below it (kvmm runs in {own}) can use it; enable it there "
            f"(`echo +{controller} > {ctl}`, as root), start kvmm in a cgroup that has it "
            f"(`systemd-run --scope -p Delegate=yes -- kvmm ...`), or run without "
            f"{OPTION[controller]}")
