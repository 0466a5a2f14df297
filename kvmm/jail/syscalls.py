"""The seccomp allowlists of kvmm's three thread roles (kvmm/jail/seccomp.py).

Derived from traced runs (ci/trace/trace.py over ci/trace/scenarios.py; the
recorded traces are ci/trace/runs/*.json) and checked against them by
tests/unit/test_seccomp.py: every traced call must be allowed, and every entry
must be used by a traced run or say, with `untraced=`, why it is here anyway.
Everything else traps (SIGSYS, reported, the monitor dies).

Calls a thread makes while building the VM (opening files, KVM_CREATE_*,
mmap of guest RAM, socket/bind of the API) come before its filter and are
not here: the filters hold only what the running monitor does.
"""
from __future__ import annotations

from kvmm.ioctl import numbers as kvm

MASKED_EQ = 7                   # libseccomp SCMP_CMP_MASKED_EQ
EQ = 4                          # SCMP_CMP_EQ
U32 = 0xFFFFFFFF                # ioctl's request is an unsigned int
PROT_EXEC = 0x4                 # asm-generic/mman-common.h
# ioctls that are not KVM's (asm-generic/ioctls.h, linux/if_tun.h)
TCGETS = 0x5401
TCSETS = 0x5402
FIONBIO = 0x5421
SHUT_WR = 1                     # sys/socket.h
TUNSETOFFLOAD = 0x400454D0      # _IOW('T', 208, unsigned int)
# clone flags of os.fork() (glibc: CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD)
FORK_FLAGS = 0x01200011


class Rule:
    """What one allowlist entry permits: any arguments, or one of `arg_sets`
    (each a list of (index, op, a, b) comparisons that must all hold)."""
    __slots__ = ("why", "sets", "untraced")

    def __init__(self, why: str, sets: list | None = None, untraced: str | None = None):
        self.why = why
        self.sets = sets
        self.untraced = untraced        # why it stays although no traced run uses it

    def arg_sets(self) -> list:
        return self.sets if self.sets is not None else [[]]


def any_args(why: str, untraced: str | None = None) -> Rule:
    return Rule(why, None, untraced)


def one_of(why: str, index: int, values: dict, mask: int = U32) -> Rule:
    """Argument `index` (masked) equals one of `values` ({value: why or None})."""
    return Rule(why, [[(index, MASKED_EQ, mask, v)] for v in values])


def without(why: str, index: int, bits: int) -> Rule:
    """Argument `index` has none of `bits` set."""
    return Rule(why, [[(index, MASKED_EQ, bits, 0)]])


# Every role: the interpreter and its threads.
COMMON = {
    "read": any_args("eventfd/timerfd/pipe reads; the teardown child's wait"),
    "write": any_args("console output, eventfd kicks, log lines, the SIGSYS report"),
    "futex": any_args("the GIL, locks, conditions (pause/resume), thread joins"),
    "getpid": any_args("signal.pthread_kill and Python's thread bookkeeping"),
    "gettid": any_args("threading.get_native_id, raise() in the SIGSYS report"),
    "tgkill": one_of("pthread_kill of the vCPU kick (SIGUSR1); raise(SIGSYS) when a filter "
                     "traps", 2, {10: "SIGUSR1", 31: "SIGSYS"}),
    "rt_sigprocmask": any_args("glibc blocks signals around thread start and exit"),
    "rt_sigreturn": any_args("return from the SIGUSR1 kick handler"),
    "madvise": any_args("glibc frees a finished thread's stack (MADV_DONTNEED)"),
    "munmap": any_args("the allocator returns memory; a thread's stack at exit"),
    "mmap": Rule("the allocator (anonymous memory); never executable",
                 [[(2, MASKED_EQ, PROT_EXEC, 0)]],
                 untraced="Python's allocator maps a new arena whenever it needs one"),
    "mprotect": without("the allocator (glibc arenas, thread stacks); never executable", 2,
                        PROT_EXEC),
    "exit": any_args("a thread ends"),
    "clock_gettime": any_args("time.monotonic (the vDSO usually answers)"),
    "brk": any_args("malloc grows the heap", untraced="malloc may grow the heap at any time"),
    "sched_yield": any_args("glibc lock contention",
                            untraced="glibc may yield while spinning on a contended lock"),
}

VCPU = {
    "ioctl": one_of("on the vCPU fd: run it, and read its registers for the crash report; on a "
                    "TAP: the offloads a guest negotiates", 1,
                    {kvm.KVM_RUN: None, kvm.KVM_GET_REGS: "crash report",
                     kvm.KVM_GET_SREGS: "crash report", TUNSETOFFLOAD: "virtio-net features"}),
}

IO = {
    "epoll_wait": any_args("the event loop"),
    "epoll_ctl": any_args("readers added and removed (API clients, devices)"),
    "timerfd_settime": any_args("rate-limiter wake-ups"),
    "readv": any_args("virtio-net: frames from the TAP"),
    "writev": any_args("virtio-net: frames to the TAP"),
    "preadv2": any_args("virtio-blk reads"),
    "pwritev2": any_args("virtio-blk writes"),
    "fdatasync": any_args("virtio-blk flush"),
    "fallocate": any_args("virtio-blk discard and write-zeroes (punch hole, zero range)"),
    "accept4": any_args("API clients"),
    "recvfrom": any_args("API requests"),
    "sendto": any_args("API answers"),
    "getsockname": any_args("h11 server: the client's address"),
    "shutdown": one_of("an HTTP error answer or a closing connection: shut the write side, "
                       "then drain the client (kvmm.api.http _Connection.linger)", 1,
                       {SHUT_WR: None}),
    "close": any_args("API connections; a replaced drive's image"),
    "ioctl": one_of("FIONBIO on an accepted API connection; TCGETS: Python's open() asks "
                    "isatty of each file it opens (a TAP's /sys counters for GET /kvmm/stats "
                    "and FlushMetrics)", 1,
                    {FIONBIO: "API connections", TCGETS: "open(): isatty"}),
    "openat": any_args("PATCH /drives path_on_host: the new image, and the O_TMPFILE probe "
                       "in its directory (Landlock decides which paths)"),
    "newfstatat": any_args("PATCH /drives: the new image's type and size"),
    "access": any_args("PATCH /drives: read/write permission of the new image"),
    "flock": any_args("PATCH /drives: the new image's lock"),
    "lseek": any_args("PATCH /drives: the new image's size"),
    "statfs": any_args("PATCH /drives: the new image's file system"),
    "mincore": any_args("GET /kvmm/stats: guest RAM touched"),
    "times": any_args("GET /kvmm/stats: CPU time"),
}

MAIN = {
    "epoll_ctl": any_args("stopping the loop unregisters its readers"),
    "ioctl": one_of("the register dump at --timeout; the terminal", 1,
                    {kvm.KVM_GET_REGS: "timeout dump", kvm.KVM_GET_SREGS: "timeout dump",
                     TCGETS: "isatty", TCSETS: "restore the terminal (interactive console)"}),
    "fdatasync": any_args("the orderly stop syncs writable images"),
    "close": any_args("teardown"),
    "close_range": any_args("the teardown child closes all but the KVM fds"),
    "clone": one_of("fork of the teardown child only (never a thread)", 0,
                    {FORK_FLAGS: None}, mask=(1 << 64) - 1),
    "set_robust_list": any_args("the teardown child after fork"),
    "getrandom": any_args("random's reseed after fork"),
    "pipe2": any_args("the teardown child's pipe"),
    "exit_group": any_args("the monitor exits"),
    "openat": any_args("--stats-file at exit (Landlock decides which paths)"),
    "newfstatat": any_args("--stats-file; the API socket before unlink"),
    "lseek": any_args("--stats-file"),
    "unlink": any_args("the API socket at exit"),
    "rmdir": any_args("--mem-overhead-limit/--cpu-quota: the monitor's cgroup leaf, removed "
                      "at exit (kvmm.quota.cgroup GuestCgroup._remove)"),
    "clock_nanosleep": any_args("the cgroup rmdir retries every 10 ms while the kernel still "
                                "moves the monitor out (EBUSY)",
                                untraced="only when rmdir meets EBUSY, which no traced run hit"),
    "mincore": any_args("--stats-file: guest RAM touched"),
    "times": any_args("--stats-file: CPU time"),
    "rt_sigaction": any_args("interpreter shutdown restores signal handlers",
                             untraced="Python may restore handlers at finalization"),
}

ROLES = {"vcpu": VCPU, "io": IO, "main": MAIN}


def allowlist(role: str) -> dict[str, Rule]:
    """Every entry of `role`: the common ones, then the role's own."""
    out = dict(COMMON)
    out.update(ROLES[role])
    return out
