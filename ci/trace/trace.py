"""Trace whole runs of the monitor, thread by thread, with python-ptrace, and
record what each thread role calls after its seccomp filter goes on.

    .venv/bin/python ci/trace/trace.py --out ci/trace/runs/NAME.json -- \\
        [ip netns exec NS] .venv/bin/python -m kvmm run ...

The monitor runs with KVMM_SECCOMP=trace: each thread installs an
allow-everything filter at the point where its real one would go. A thread's
seccomp(SECCOMP_SET_MODE_FILTER) call is its seal; from then on every system
call it (or a process it forks) makes is recorded under its role, with the
arguments the filters check: ioctl requests, socket families, mmap/mprotect
protections, prctl/fcntl commands. Roles come from the thread's name at its
seal: the process's first thread is `main`, `kvmm-io` is `io`, any other is
`vcpu`. The JSON written: {"argv": [...], "roles": {role: {syscall: {"count": N,
"args": {argindex: [values]}}}}, "status": exit status}.
`--signal-after S SIG` sends SIG to the monitor S seconds after its first seal.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from ptrace.debugger import (NewProcessEvent, ProcessExecution, ProcessExit, ProcessSignal,
                             PtraceDebugger)
from ptrace.debugger.child import createChild
from ptrace.syscall import SYSCALL_NAMES

SECCOMP = 317                   # x86_64 seccomp(2)
SECCOMP_SET_MODE_FILTER = 1
# Which argument of which call the filters look at (kvmm/jail/syscalls.py).
CHECKED_ARGS = {"ioctl": (1,), "socket": (0, 1), "mmap": (2, 3), "mprotect": (2,),
                "prctl": (0,), "fcntl": (1,), "clone": (0,), "clone3": (), "futex": (1,),
                "madvise": (2,), "setsockopt": (1, 2), "getsockopt": (1, 2), "kill": (1,),
                "tgkill": (2,), "rt_sigprocmask": (0,), "openat": (2,), "accept4": (3,),
                "socketpair": (0,), "ptrace": (0,), "close_range": (2,), "sendmsg": (2,),
                "recvfrom": (3,), "sendto": (3,), "epoll_ctl": (1,), "timerfd_settime": (1,),
                "eventfd2": (1,), "fallocate": (1,), "mremap": (3,), "rt_sigaction": (0,),
                "shutdown": (1,)}


def comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class Tracer:
    def __init__(self, argv: list[str], signal_after: tuple[float, int] | None):
        self.argv = argv
        self.debugger = PtraceDebugger()
        self.debugger.traceClone()
        self.debugger.traceFork()
        self.debugger.enableSysgood()
        self.roles: dict[str, dict] = {}
        self.role_of: dict[int, str] = {}      # tid -> role, once sealed
        self.entered: dict[int, bool] = {}
        self.pid = 0
        self.first_seal: float | None = None
        self.signal_after = signal_after
        self.signalled = False
        self.status = None

    def record(self, role: str, name: str, regs) -> None:
        calls = self.roles.setdefault(role, {})
        entry = calls.setdefault(name, {"count": 0, "args": {}})
        entry["count"] += 1
        values = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
        for i in CHECKED_ARGS.get(name, ()):
            seen = entry["args"].setdefault(str(i), [])
            v = values[i] & 0xFFFFFFFFFFFFFFFF
            if v not in seen and len(seen) < 64:
                seen.append(v)

    def on_syscall(self, process) -> None:
        tid = process.pid
        entering = not self.entered.get(tid, False)
        self.entered[tid] = entering
        if not entering:
            return
        regs = process.getregs()
        nr = regs.orig_rax
        name = SYSCALL_NAMES.get(nr, f"nr{nr}")
        role = self.role_of.get(tid)
        if (nr == SECCOMP and regs.rdi == SECCOMP_SET_MODE_FILTER and regs.rdx != 0
                and role is None):     # libseccomp's probe passes no program
            thread = comm(self.pid, tid)
            role = ("main" if tid == self.pid else "io" if thread.startswith("kvmm-io")
                    else "vcpu")
            self.role_of[tid] = role
            if self.first_seal is None:
                self.first_seal = time.monotonic()
            return
        if role is not None:
            self.record(role, name, regs)

    def run(self) -> int:
        env = dict(os.environ, KVMM_SECCOMP="trace")
        self.pid = createChild(self.argv, no_stdout=False, env=env)
        process = self.debugger.addProcess(self.pid, is_attached=True)
        process.syscall()
        while self.debugger:
            self.maybe_signal()
            try:
                event = self.debugger.waitSyscall()
            except ProcessExit as e:
                if e.process.pid == self.pid:
                    self.status = e.exitcode if e.exitcode is not None else -(e.signum or 0)
                self.debugger.deleteProcess(e.process)
                continue
            except ProcessSignal as e:
                e.process.syscall(e.signum)
                continue
            except NewProcessEvent as e:
                child = e.process
                parent_role = self.role_of.get(child.parent.pid)
                if parent_role is not None and not child.is_thread:
                    self.role_of[child.pid] = parent_role     # a fork inherits the filter
                elif parent_role is not None:
                    self.role_of[child.pid] = parent_role     # so does a new thread
                child.syscall()
                child.parent.syscall()
                continue
            except ProcessExecution as e:
                e.process.syscall()
                continue
            process = event.process
            self.on_syscall(process)
            process.syscall()
        self.debugger.quit()
        return self.status if self.status is not None else 0

    def maybe_signal(self) -> None:
        if self.signal_after is None or self.signalled or self.first_seal is None:
            return
        if time.monotonic() - self.first_seal >= self.signal_after[0]:
            os.kill(self.pid, self.signal_after[1])
            self.signalled = True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--signal-after", nargs=2, metavar=("SECONDS", "SIGNAL"))
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    after = None
    if a.signal_after:
        after = (float(a.signal_after[0]), getattr(signal, a.signal_after[1]))
    tracer = Tracer(command, after)
    status = tracer.run()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"argv": command, "status": status, "roles": tracer.roles}, f, indent=1,
                  sort_keys=True)
    summary = {r: len(c) for r, c in tracer.roles.items()}
    print(f"trace: {' '.join(command)}: status {status}, syscalls per role {summary}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
