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


def _positive_number(name: str):
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{name} {text!r} is not a number") from None
        if not value > 0:
            raise UsageError(f"{name} {text!r}: give a positive number")
        return value
    return convert


def _cpu_list(text: str) -> list:
    try:
        cpus = [int(part, 10) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--cpu-pin {text!r}: give host CPU numbers separated by commas") \
            from None
    if any(c < 0 for c in cpus):
        raise UsageError(f"--cpu-pin {text!r}: CPU numbers are not negative")
    return cpus


def _shorthand(option: str, text: str, keys: tuple) -> dict:
    values = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or key not in keys:
            raise UsageError(f"{option} {text!r}: {item!r} is not one of "
                             f"{', '.join(k + '=' for k in keys)}")
        values[key] = value
    return values


def _quota_settings(args, config) -> None:
    """The quota options of `kvmm run` into `config` (checked by kvmm.quota).
    Nothing is imported unless a limit is given: this runs on the boot path."""
    from kvmm.config import parse_size
    if args.drive_group or args.net_group or args.rate_limit:
        _limit_settings(args, config)
    if args.mem_overhead_limit is not None:
        config.mem_overhead_limit = parse_size(args.mem_overhead_limit, "--mem-overhead-limit",
                                               default_unit="M")
    config.cpu_quota = args.cpu_quota
    config.cpu_pin = args.cpu_pin
    config.api_sock = args.api_sock
    config.stats_file = args.stats_file
    config.throttle_backoff_ms = args.throttle_backoff_ms


def _limit_settings(args, config) -> None:
    import json

    from kvmm.quota.limits import DIRECTIONS, check_shorthand, shorthand_keys, spec_from_json
    if args.drive_group:
        config.drive_group = _shorthand("--drive-group", args.drive_group, shorthand_keys())
        check_shorthand(config.drive_group)
    if args.net_group:
        config.net_group = _shorthand("--net-group", args.net_group, shorthand_keys(DIRECTIONS))
        check_shorthand(config.net_group, DIRECTIONS)
    for item in args.rate_limit:
        target, eq, text = item.partition("=")
        if not eq:
            raise UsageError(f"--rate-limit {item!r}: write TARGET=JSON")
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--rate-limit {target}: not JSON ({e})") from None
        spec_from_json(obj, f"--rate-limit {target}")
        if target in config.rate_limits:
            raise UsageError(f"--rate-limit {target} given twice")
        config.rate_limits[target] = obj


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
    Option("--net", "a virtio-net NIC on a TAP interface (created and brought up if missing; "
           "MAC generated if not given)", "tap=NAME[,mac=MAC][,id=NAME]", repeat=True),
    Option("--drive-group", "one limit shared by all drives: bw=B/s,iops=N[,bw_burst=,"
           "iops_burst=]", "LIMITS"),
    Option("--net-group", "one limit shared by all NICs, per direction: rx_bw=,tx_bw=,"
           "rx_iops=,tx_iops=", "LIMITS"),
    Option("--rate-limit", "a limiter in Firecracker's JSON form for drive:ID, net:ID:rx|tx, "
           "drives or nets:rx|tx", "TARGET=JSON", repeat=True),
    Option("--api-sock", "control socket (stats, limit changes, pause/resume/stop)", "PATH"),
    Option("--stats-file", "write device, limiter and memory counters here at exit", "PATH"),
    Option("--mem-overhead-limit", "run the monitor in its own memory cgroup limited to guest "
           "RAM plus SIZE", "SIZE"),
    Option("--cpu-quota", "CPU time the whole guest may use, in CPUs (e.g. 0.5)", "CPUS",
           _positive_number("--cpu-quota")),
    Option("--cpu-pin", "host CPU for each vCPU, e.g. 0,1", "LIST", _cpu_list),
    Option("--throttle-backoff-ms", "wait at least this long after a throttled request "
           "(Firecracker's fixed back-off; for comparisons)", "MS", _whole("--throttle-backoff-ms"),
           default=0),
    Option("--quiet", "no monitor messages on stderr", flag=True),
)

RUN_HELP = """usage: kvmm run [options]

Boot a guest kernel and wait for it. Exit status: the guest's own (port 0xf4),
0 on a guest reset, 2 for a bad configuration or image (nothing is started),
124 on --timeout, 125 when the guest crashes its vCPU, 126 for a monitor error.
"""

MAIN_HELP = """usage: kvmm COMMAND [options]

commands:
  run        boot a guest and wait for it to finish
  boot-test  boot a kernel and wait for a success or failure pattern on its console
  stats      print the counters of a running guest (through its --api-sock)
  limit      change a rate limit of a running guest (through its --api-sock)

`kvmm COMMAND --help` describes a command's options.
"""


class Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def parse_options(options: tuple, argv: list[str], positional: bool = False) -> Namespace:
    by_name = {o.name: o for o in options}
    by_name["-q"] = by_name.get("--quiet")
    values = {o.dest: (list(o.default) if o.repeat else o.default) for o in options}
    values["positional"] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        opt = by_name.get(name)
        if opt is None and positional and not arg.startswith("-"):
            values["positional"].append(arg)
            i += 1
            continue
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
        if args.net:
            from kvmm.virtio.net.config import parse_net
            config.nets = [parse_net(text) for text in args.net]
        _quota_settings(args, config)
        from kvmm import machine
        prepared = machine.prepare(config)
    except (ConfigError, BootError, ValueError, UsageError) as e:
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
        if config.stats_file:
            _write_stats(config.stats_file, vm, reason)
    finally:
        vm.release_for_exit()       # the process exits next: no need to unmap or join
    if not args.quiet:
        for line in vm.report_lines:
            print(f"kvmm: {line}", file=sys.stderr)
        if reason.kind in ("crash", "timeout", "error"):
            print(f"kvmm: {reason.message}", file=sys.stderr)
    return reason.status


def _write_stats(path: str, vm, reason) -> None:
    import json
    stats = vm.stats()
    stats["stop"] = {"kind": reason.kind, "status": reason.status}
    try:
        with open(path, "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
    except OSError as e:
        print(f"kvmm: --stats-file {path}: cannot write it ({e.strerror})", file=sys.stderr)


CONTROL_OPTIONS = (
    Option("--api-sock", "the control socket of the running kvmm (its --api-sock)", "PATH"),
)


def _control(args, payload: dict) -> int:
    import json

    from kvmm.api.control import request
    if not args.api_sock:
        return _die("give --api-sock PATH of the running kvmm")
    try:
        answer = request(args.api_sock, payload)
    except OSError as e:
        return _die(f"cannot reach kvmm at {args.api_sock}: {e.strerror or e}", 1)
    if not answer.get("ok"):
        return _die(answer.get("error", "request refused"), 1)
    if "stats" in answer:
        print(json.dumps(answer["stats"], indent=1, sort_keys=True))
    return 0


def stats_command(args: Namespace) -> int:
    return _control(args, {"cmd": "stats"})


def limit_command(args: Namespace) -> int:
    import json
    if len(args.positional) != 2:
        return _die("usage: kvmm limit --api-sock PATH TARGET JSON (e.g. drive:d0 "
                    "'{\"bandwidth\": {\"size\": 1048576, \"refill_time\": 100}}')")
    target, text = args.positional
    try:
        obj = json.loads(text)
    except ValueError as e:
        return _die(f"not JSON: {e}")
    return _control(args, {"cmd": "patch", "target": target, "rate_limiter": obj})


def _boot_test_option(o: Option) -> Option:
    if o.name == "--timeout":
        return Option("--timeout", "give up after S seconds (default 120)", "S", _seconds,
                      default=120.0)
    return o


BOOT_TEST_OPTIONS = tuple(_boot_test_option(o) for o in RUN_OPTIONS
                          if o.name not in ("--mem-prefault", "--mem-lock", "--quiet")) + (
    Option("--success", "console text that means the boot worked (at least one)",
           "TEXT", repeat=True),
    Option("--failure", "console text that means it failed (default "
           "'Kernel panic - not syncing')", "TEXT", repeat=True),
    Option("--regex", "--success/--failure are Python regular expressions", flag=True),
    Option("--wait-exit", "after the success pattern, wait for the guest to power off, "
           "reset or exit 0 by itself", flag=True),
    Option("--junit", "write a JUnit XML report here", "PATH"),
    Option("--name", "test case name in the report (default: the kernel's file name)", "NAME"),
    Option("--require-kvm", "fail (exit 2) instead of skipping when /dev/kvm is unusable",
           flag=True),
    Option("--quiet", "only the verdict on stderr", flag=True),
)

BOOT_TEST_HELP = """usage: kvmm boot-test --kernel PATH --success TEXT [options]

Boot a kernel and watch its serial console: PASS when a --success pattern
appears (with --wait-exit: and the guest then stops by itself), FAIL on a
--failure pattern, a crash, a guest that stops first, or --timeout (the
register dump and the last console lines are printed). The time from the
monitor's start to the success pattern is printed. Exit status: 0 pass (or
skipped when /dev/kvm is unusable, unless --require-kvm), 1 fail, 2 nothing
ran (bad option or image, or --require-kvm refused).
"""


def boot_test_command(args: Namespace) -> int:
    from kvmm import boottest
    from kvmm.boot.errors import BootError
    from kvmm.config import ConfigError, VmConfig, default_kernel, parse_size
    if not args.success:
        return _die("boot-test needs at least one --success pattern")
    kernel = args.kernel or default_kernel()
    name = args.name or os.path.basename(kernel)
    try:
        config = VmConfig(
            kernel=kernel, initrd=args.initrd,
            mem_size=parse_size(args.mem, "--mem", default_unit="M"),
            vcpus=args.vcpus, cmdline=args.cmdline, console=args.console,
            timeout=args.timeout, mem_backing=args.mem_backing,
            cpuid_hide=frozenset(args.hide_cpuid), console_capture=True, interactive=False)
        if args.drive:
            from kvmm.virtio.blk import parse_drive
            config.drives = [parse_drive(text) for text in args.drive]
        if args.net:
            from kvmm.virtio.net.config import parse_net
            config.nets = [parse_net(text) for text in args.net]
        if args.regex:
            import re
            for p in args.success + args.failure:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(f"pattern {p!r} is not a regular expression ({e})") \
                        from None
        from kvmm import machine
        prepared = machine.prepare(config)     # every image and option checked first
    except (ConfigError, BootError, ValueError) as e:
        return _die(str(e))
    problem = boottest.kvm_problem()
    if problem is not None:
        if args.require_kvm:
            return _die(f"--require-kvm: /dev/kvm cannot run guests here: {problem}")
        outcome = boottest.Outcome(boottest.SKIP, f"/dev/kvm cannot run guests here: {problem}")
        boottest.report(outcome)
        if args.junit:
            boottest.write_junit(args.junit, name, outcome)
        return 0
    from kvmm.ioctl import HostNotSupported, KvmError
    try:
        outcome = boottest.run_boot_test(config, prepared, args.success,
                                         args.failure or list(boottest.DEFAULT_FAILURE),
                                         _START, wait_exit=args.wait_exit, regex=args.regex)
    except (ConfigError, BootError, ValueError, HostNotSupported) as e:
        return _die(str(e))
    except (KvmError, OSError) as e:
        return _die(f"could not create the VM: {e}", 1)
    boottest.report(outcome, quiet=args.quiet)
    if args.junit:
        try:
            boottest.write_junit(args.junit, name, outcome)
        except OSError as e:
            return _die(f"--junit {args.junit}: cannot write it ({e.strerror})", 1)
    return 0 if outcome.result == boottest.PASS else 1


STATS_HELP = """usage: kvmm stats --api-sock PATH

Print the counters of a running guest as JSON: per device (requests, bytes,
errors), per rate limiter (bytes and ops passed, times throttled, time spent
throttled, current budgets) and memory (monitor RSS/PSS, guest RAM touched,
the cgroup's usage).
"""

LIMIT_HELP = """usage: kvmm limit --api-sock PATH TARGET JSON

Change a rate limiter of a running guest. TARGET is drive:ID, net:ID:rx,
net:ID:tx, drives or nets:rx|tx; JSON is Firecracker's RateLimiter object, e.g.
'{"bandwidth": {"size": 1048576, "refill_time": 100}}'. A bucket left out is
unchanged; a bucket of size 0 removes that limit.
"""

COMMANDS = {"run": (RUN_OPTIONS, RUN_HELP, run_command),
            "boot-test": (BOOT_TEST_OPTIONS, BOOT_TEST_HELP, boot_test_command),
            "stats": (CONTROL_OPTIONS, STATS_HELP, stats_command),
            "limit": (CONTROL_OPTIONS, LIMIT_HELP, limit_command)}
POSITIONAL_COMMANDS = ("limit",)


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
        args = parse_options(options, argv[1:], positional=argv[0] in POSITIONAL_COMMANDS)
    except UsageError as e:
        return _die(f"{e} (see `kvmm {argv[0]} --help`)")
    return handler(args)


def entry() -> None:
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
