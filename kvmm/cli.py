"""`kvmm` command line.

The boot path imports only what booting needs: the option parser here is a
small table-driven one (argparse alone costs more to import than creating
a VM).
"""
from __future__ import annotations

import time

_START = time.monotonic()

import os  # noqa: E402
import sys  # noqa: E402

USAGE_ERROR = 2


class UsageError(Exception):
    pass


class Option:
    __slots__ = ("name", "dest", "metavar", "help", "convert", "repeat", "flag", "default")

    def __init__(self, name: str, help: str, metavar: str = "", convert=str,
                 repeat: bool = False, flag: bool = False, default=None):
        self.name = name
        self.dest = name.lstrip("-").replace("-", "_")
        self.metavar = metavar
        self.help = help
        self.convert = convert
        self.repeat = repeat
        self.flag = flag
        self.default = [] if repeat else (False if flag else default)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout {text!r} is not a number of seconds") from None
    if not value > 0 or value != value:
        raise UsageError(f"--timeout {text!r}: give a positive number of seconds")
    return value


def _whole(name: str):
    def convert(text: str) -> int:
        try:
            return int(text, 10)
        except ValueError:
            raise UsageError(f"{name} {text!r} is not a whole number") from None
    return convert


RUN_OPTIONS = (
    Option("--kernel", "ELF or bzImage kernel (default: the guest kernel this repository "
           "builds, guest-kernel/build/kvmm-guest.elf)", "PATH"),
    Option("--initrd", "an initrd/initramfs image for the kernel", "PATH"),
    Option("--mem", "guest RAM, reserved up front (default 64M)", "SIZE", default="64M"),
    Option("--vcpus", "number of vCPUs (default 1)", "N", _whole("--vcpus"), default=1),
    Option("--cmdline", "kernel command line", "TEXT", default=""),
    Option("--console", "where the serial console goes: stdout (default), none, or a file",
           "DEST", default="stdout"),
    Option("--timeout", "stop the guest after S seconds (exit status 124)", "S", _seconds),
    Option("--mem-backing", "host pages behind guest RAM: normal, thp or hugetlb", "KIND",
           default="normal"),
    Option("--mem-prefault", "populate all guest RAM before boot", flag=True),
    Option("--mem-lock", "lock guest RAM in host memory (mlock)", flag=True),
    Option("--hide-cpuid", "hide a CPU feature from the guest (xsave, x2apic)", "FEATURE",
           repeat=True),
    Option("--drive", "a virtio-blk disk backed by a raw image", "path=IMG[,ro][,id=NAME]",
           repeat=True),
    Option("--quiet", "no monitor messages on stderr", flag=True),
)

RUN_HELP = """usage: kvmm run [options]

Boot a guest kernel and wait for it. Exit status: the guest's own (port 0xf4),
0 on a guest reset, 2 for a bad configuration or image (nothing is started),
124 on --timeout, 125 when the guest crashes its vCPU, 126 for a monitor error.
"""

MAIN_HELP = """usage: kvmm COMMAND [options]

commands:
  run     boot a guest and wait for it to finish

`kvmm COMMAND --help` describes a command's options.
"""


class Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def parse_options(options: tuple, argv: list[str]) -> Namespace:
    by_name = {o.name: o for o in options}
    by_name["-q"] = by_name.get("--quiet")
    values = {o.dest: (list(o.default) if o.repeat else o.default) for o in options}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        opt = by_name.get(name)
        if opt is None:
            raise UsageError(f"unknown option {arg!r}" if arg.startswith("-")
                             else f"unexpected argument {arg!r}")
        if opt.flag:
            if eq:
                raise UsageError(f"{name} takes no value")
            values[opt.dest] = True
            i += 1
            continue
        if eq:
            text = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value ({opt.metavar})")
            text = argv[i + 1]
            i += 2
        value = opt.convert(text)
        if opt.repeat:
            values[opt.dest].append(value)
        else:
            values[opt.dest] = value
    return Namespace(**values)


def format_help(header: str, options: tuple) -> str:
    lines = [header, "options:"]
    for o in options:
        left = f"  {o.name}" + (f" {o.metavar}" if o.metavar else "")
        more = " (repeatable)" if o.repeat else ""
        lines.append(f"{left:<34} {o.help}{more}")
    return "\n".join(lines) + "\n"


def _die(message: str, status: int = USAGE_ERROR) -> int:
    print(f"kvmm: {message}", file=sys.stderr)
    return status


def run_command(args: Namespace) -> int:
    from kvmm.boot.errors import BootError
    from kvmm.config import ConfigError, VmConfig, default_kernel, parse_size
    try:
        config = VmConfig(
            kernel=args.kernel or default_kernel(), initrd=args.initrd,
            mem_size=parse_size(args.mem, "--mem", default_unit="M"),
            vcpus=args.vcpus, cmdline=args.cmdline, console=args.console,
            timeout=args.timeout, mem_backing=args.mem_backing,
            mem_prefault=args.mem_prefault, mem_lock=args.mem_lock,
            cpuid_hide=frozenset(args.hide_cpuid))
        if args.drive:
            from kvmm.virtio.blk import parse_drive
            config.drives = [parse_drive(text) for text in args.drive]
        from kvmm import machine
        prepared = machine.prepare(config)
    except (ConfigError, BootError, ValueError) as e:
        return _die(str(e))
    from kvmm.ioctl import HostNotSupported, KvmError
    try:
        vm = machine.build(config, prepared, start_time=_START)
    except HostNotSupported as e:
        return _die(str(e))
    except (ConfigError, BootError, ValueError) as e:
        return _die(str(e))
    except (KvmError, OSError) as e:
        return _die(f"could not create the VM: {e}", machine.EXIT_MONITOR)
    try:
        vm.start()
        reason = vm.wait(config.timeout)
    finally:
        vm.release_for_exit()       # the process exits next: no need to unmap or join
    if not args.quiet:
        for line in vm.report_lines:
            print(f"kvmm: {line}", file=sys.stderr)
        if reason.kind in ("crash", "timeout", "error"):
            print(f"kvmm: {reason.message}", file=sys.stderr)
    return reason.status


COMMANDS = {"run": (RUN_OPTIONS, RUN_HELP, run_command)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(MAIN_HELP)
        return 0 if argv else USAGE_ERROR
    command = COMMANDS.get(argv[0])
    if command is None:
        return _die(f"unknown command {argv[0]!r} (see `kvmm --help`)")
    options, header, handler = command
    if "-h" in argv[1:] or "--help" in argv[1:]:
        sys.stdout.write(format_help(header, options))
        return 0
    try:
        args = parse_options(options, argv[1:])
    except UsageError as e:
        return _die(f"{e} (see `kvmm {argv[0]} --help`)")
    return handler(args)


def entry() -> None:
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
