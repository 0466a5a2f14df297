"""`kvmm jail`: Firecracker's jailer command line for kvmm's monitor.

    kvmm jail --id ID --exec-file PATH --uid UID --gid GID [--chroot-base-dir DIR]
              [--netns PATH] [--cgroup FILE=VALUE]... [--cgroup-version 1|2]
              [--parent-cgroup PATH] [--resource-limit fsize=N|no-file=N]...
              [--daemonize] [--new-pid-ns] [-- MONITOR ARGS...]

Exit status: 2 for bad input (one line on stderr; nothing is created, or what
was created is removed again), 1 when the host refuses a step; otherwise the
process becomes the monitor (or, with --new-pid-ns, exits 0 once the monitor
runs in its own pid namespace).
"""
from __future__ import annotations

import sys
import time

from kvmm.cli.options import Option, UsageError, format_help, parse_options

EXIT_BAD_INPUT, EXIT_FAILURE = 2, 1

OPTIONS = (
    Option("--id", "the jail's and the microVM's id: 1-64 letters, digits and '-'", "ID"),
    Option("--exec-file", "the monitor to run: kvmm-firecracker (or a `firecracker` link to "
           "it); its name must contain 'firecracker'", "PATH"),
    Option("--uid", "the user id the monitor runs as", "UID"),
    Option("--gid", "the group id the monitor runs as", "GID"),
    Option("--chroot-base-dir", "where jails are built (default /srv/jailer): the root is "
           "<dir>/<exec file name>/<id>/root", "DIR"),
    Option("--netns", "join this network namespace (e.g. /var/run/netns/NAME)", "PATH"),
    Option("--cgroup", "write VALUE to FILE in the jail's cgroup (e.g. cpuset.cpus=0)",
           "FILE=VALUE", repeat=True),
    Option("--cgroup-version", "1 (default) or 2", "1|2"),
    Option("--parent-cgroup", "the jail's cgroup is <hierarchy>/<this>/<id> (default: the "
           "exec file's name)", "PATH"),
    Option("--resource-limit", "an rlimit for the monitor (no-file defaults to 2048)",
           "fsize=N|no-file=N", repeat=True),
    Option("--node", "NUMA node (older jailers' flag): cpuset.mems and cpuset.cpus of the "
           "node", "N"),
    Option("--daemonize", "setsid() and stdin, stdout, stderr to /dev/null", flag=True),
    Option("--new-pid-ns", "run the monitor as pid 1 of a new pid namespace (its host pid "
           "goes to <root>/<exec file name>.pid)", flag=True),
)

HELP = """usage: kvmm jail --id ID --exec-file PATH --uid UID --gid GID [options] [-- MONITOR ARGS]

Firecracker's jailer for kvmm's monitor: build <chroot-base-dir>/<exec file
name>/<id>/root, put the monitor in its own cgroup, rlimits, mount, ipc and
uts namespaces (and pid, network), pivot into the root, drop to UID/GID with
no capabilities and exec the monitor with --id and the arguments after `--`.
Paths the monitor is given (--config-file and the files it names) are inside
the root. See docs/jail.md.
"""


def split_monitor_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """The jailer's own arguments, and the monitor's (after the first `--`)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _die(message: str, status: int) -> int:
    print(f"kvmm jail: {message}", file=sys.stderr)
    return status


def command(args, start: float) -> int:
    """The handler: `args` parsed from OPTIONS, with the monitor's arguments in
    `args.rest` (what followed `--`)."""
    start_us = int(time.monotonic() * 1e6)
    start_cpu_us = int(time.process_time() * 1e6)
    from kvmm.jail.spec import JailError, JailFailure, jail_spec
    from kvmm.jail.jailer import run
    try:
        spec = jail_spec(id=args.id, exec_file=args.exec_file, uid=args.uid, gid=args.gid,
                         chroot_base_dir=args.chroot_base_dir, netns=args.netns,
                         cgroup=args.cgroup, cgroup_version=args.cgroup_version,
                         parent_cgroup=args.parent_cgroup, resource_limit=args.resource_limit,
                         daemonize=args.daemonize, new_pid_ns=args.new_pid_ns, node=args.node,
                         monitor_args=getattr(args, "rest", []))
        run(spec, start_us, start_cpu_us)
    except JailError as e:
        return _die(str(e), EXIT_BAD_INPUT)
    except JailFailure as e:
        return _die(str(e), EXIT_FAILURE)
    except OSError as e:
        return _die(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
                    EXIT_FAILURE)
    return EXIT_FAILURE                       # run() returns only by exec or by raising


def main(argv: list[str] | None = None) -> int:
    """`python -m kvmm.jail ARGS` (the same as `kvmm jail ARGS`)."""
    argv = sys.argv[1:] if argv is None else argv
    own, rest = split_monitor_args(argv)
    if "-h" in own or "--help" in own:
        sys.stdout.write(format_help(HELP, OPTIONS))
        return 0
    try:
        args = parse_options(OPTIONS, own)
    except UsageError as e:
        return _die(f"{e} (see `kvmm jail --help`)", EXIT_BAD_INPUT)
    args.rest = rest
    return command(args, time.monotonic())
