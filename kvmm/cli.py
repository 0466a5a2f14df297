"""`kvmm` command line."""
from __future__ import annotations

import time

_START = time.monotonic()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

USAGE_ERROR = 2


def _die(message: str, status: int = USAGE_ERROR) -> int:
    print(f"kvmm: {message}", file=sys.stderr)
    return status


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def _vcpus(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        self.exit(USAGE_ERROR, f"kvmm: {message} (see `kvmm {self.prog.split()[-1]} --help`)\n"
                  if " " in self.prog else f"kvmm: {message} (see `kvmm --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvmm", description="A virtual machine monitor for Linux KVM.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="boot a guest and wait for it to finish",
                       description="Boot a guest kernel; exit with the guest's status "
                       "(2: bad configuration, 124: timeout, 125: guest crashed, "
                       "126: monitor error).")
    r.add_argument("--kernel", help="ELF kernel (default: the guest kernel this repository "
                   "builds, guest-kernel/build/kvmm-guest.elf)")
    r.add_argument("--mem", default="64M", help="guest RAM, reserved up front (default 64M)")
    r.add_argument("--vcpus", type=_vcpus, default=1, help="number of vCPUs (default 1)")
    r.add_argument("--cmdline", default="", help="kernel command line")
    r.add_argument("--console", default="stdout",
                   help="where the serial console goes: stdout, none, or a file path")
    r.add_argument("--timeout", type=_positive_float,
                   help="stop the guest after this many seconds (exit status 124)")
    r.add_argument("--mem-backing", choices=("normal", "thp", "hugetlb"), default="normal",
                   help="host pages behind guest RAM")
    r.add_argument("--mem-prefault", action="store_true",
                   help="populate all guest RAM before boot")
    r.add_argument("--mem-lock", action="store_true",
                   help="lock guest RAM in host memory (mlock)")
    r.add_argument("--hide-cpuid", action="append", default=[], metavar="FEATURE",
                   help="hide a CPU feature from the guest (xsave, x2apic); repeatable")
    r.add_argument("--drive", action="append", default=[], metavar="path=IMG[,ro][,id=NAME]",
                   help="a virtio-blk disk backed by a raw image; repeatable")
    r.add_argument("-q", "--quiet", action="store_true", help="no monitor messages on stderr")
    return p


def run_command(args) -> int:
    from kvmm.config import ConfigError, VmConfig, default_kernel, parse_size
    from kvmm.boot.errors import BootError
    try:
        config = VmConfig(
            kernel=args.kernel or default_kernel(),
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
        vm = machine.build(config, prepared)
    except HostNotSupported as e:
        return _die(str(e))
    except (ConfigError, BootError, ValueError) as e:
        return _die(str(e))
    except (KvmError, OSError) as e:
        return _die(f"could not create the VM: {e}", machine.EXIT_MONITOR)
    vm.created = _START
    vm.boot_timer._start = _START
    with vm:
        vm.start()
        reason = vm.wait(config.timeout)
    if not args.quiet:
        for line in vm.report_lines:
            print(f"kvmm: {line}", file=sys.stderr)
        if reason.kind in ("crash", "timeout", "error"):
            print(f"kvmm: {reason.message}", file=sys.stderr)
    return reason.status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_command(args)
    parser.print_help()
    return USAGE_ERROR


def entry() -> None:
    status = main()
    sys.stdout.flush()
    os._exit(status)
