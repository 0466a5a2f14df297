"""`kvmm` command line: `run`, `boot-test`, `firecracker`, `stats`, `limit`.

The boot path imports only what booting needs: each command's module is
imported when it is chosen.
"""
from __future__ import annotations

import time

_START = time.monotonic()

import os  # noqa: E402
import sys  # noqa: E402

from kvmm.cli.options import USAGE_ERROR, UsageError, format_help, parse_options  # noqa: E402

MAIN_HELP = """usage: kvmm COMMAND [options]

commands:
  run          boot a guest and wait for it to finish
  boot-test    boot a kernel and wait for a success or failure pattern on its console
  firecracker  a drop-in for Firecracker: its flags, its API (also `kvmm-firecracker`)
  jail         Firecracker's jailer for the monitor (also `kvmm-jailer`; docs/jail.md)
  stats        print the counters of a running guest (through its --api-sock)
  limit        change a rate limit of a running guest (through its --api-sock)

`kvmm COMMAND --help` describes a command's options; `kvmm --version` the version.
"""


def _commands() -> dict:
    """name -> (module, options attribute, help attribute, handler attribute)."""
    return {"run": ("kvmm.cli.run", "RUN_OPTIONS", "RUN_HELP", "run_command"),
            "boot-test": ("kvmm.cli.run", "BOOT_TEST_OPTIONS", "BOOT_TEST_HELP",
                          "boot_test_command"),
            "firecracker": ("kvmm.cli.firecracker", "OPTIONS", "HELP", "command"),
            "stats": ("kvmm.cli.control", "OPTIONS", "STATS_HELP", "stats_command"),
            "limit": ("kvmm.cli.control", "OPTIONS", "LIMIT_HELP", "limit_command")}


POSITIONAL_COMMANDS = ("limit",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(MAIN_HELP)
        return 0 if argv else USAGE_ERROR
    if argv[0] in ("--version", "-V"):
        from kvmm.version import version_lines
        print("\n".join(version_lines(firecracker=False)))
        return 0
    if argv[0] == "jail":              # its own parser: the monitor's arguments follow `--`
        from kvmm.cli import jail
        return jail.main(argv[1:])
    command = _commands().get(argv[0])
    if command is None:
        print(f"kvmm: unknown command {argv[0]!r} (see `kvmm --help`)", file=sys.stderr)
        return USAGE_ERROR
    module = __import__(command[0], fromlist=["_"])
    options, header, handler = (getattr(module, name) for name in command[1:])
    if "-h" in argv[1:] or "--help" in argv[1:]:
        sys.stdout.write(format_help(header, options))
        return 0
    try:
        args = parse_options(options, argv[1:], positional=argv[0] in POSITIONAL_COMMANDS)
    except UsageError as e:
        print(f"kvmm: {e} (see `kvmm {argv[0]} --help`)", file=sys.stderr)
        return USAGE_ERROR
    return handler(args, _START)


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def entry() -> None:
    _exit(main())


def jailer_entry() -> None:
    """The `kvmm-jailer` console script (for orchestrators' jailer_path)."""
    _exit(main(["jail"] + sys.argv[1:]))


def firecracker_entry() -> None:
    """The `kvmm-firecracker` console script (install or link it as `firecracker`)."""
    _exit(main(["firecracker"] + sys.argv[1:]))
