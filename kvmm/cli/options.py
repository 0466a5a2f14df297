"""The option parser of kvmm's commands: a small table-driven one (argparse
alone costs more to import than creating a VM), and the options of `run`.
"""
from __future__ import annotations

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


RUN_OPTIONS = (
    Option("--kernel", "ELF or bzImage kernel (default: the guest kernel this repository "
           "builds, guest-kernel/build/kvmm-guest.elf)", "PATH"),
    Option("--initrd", "an initrd/initramfs image for the kernel", "PATH"),
    Option("--mem", "guest RAM, reserved up front (default 64M)", "SIZE"),
    Option("--vcpus", "number of vCPUs (default 1)", "N", _whole("--vcpus")),
    Option("--cmdline", "kernel command line", "TEXT"),
    Option("--console", "where the serial console goes: stdout (default), none, or a file",
           "DEST"),
    Option("--timeout", "stop the guest after S seconds (exit status 124)", "S", _seconds),
    Option("--mem-backing", "host pages behind guest RAM: normal, thp or hugetlb", "KIND"),
    Option("--mem-prefault", "populate all guest RAM before boot", flag=True),
    Option("--mem-lock", "lock guest RAM in host memory (mlock)", flag=True),
    Option("--hide-cpuid", "hide a CPU feature from the guest (xsave, x2apic)", "FEATURE",
           repeat=True),
    Option("--drive", "a virtio-blk disk backed by a raw image",
           "path=IMG[,ro][,id=NAME][,serial=S][,bw=..,iops=..]", repeat=True),
    Option("--net", "a virtio-net NIC on a TAP interface (created and brought up if missing; "
           "MAC generated if not given)", "tap=NAME[,mac=MAC][,id=NAME]", repeat=True),
    Option("--drive-group", "one limit shared by all drives: bw=B/s,iops=N[,bw_burst=,"
           "iops_burst=]", "LIMITS"),
    Option("--net-group", "one limit shared by all NICs, per direction: rx_bw=,tx_bw=,"
           "rx_iops=,tx_iops=", "LIMITS"),
    Option("--rate-limit", "a limiter in Firecracker's JSON form for drive:ID, net:ID:rx|tx, "
           "drives or nets:rx|tx", "TARGET=JSON", repeat=True),
    Option("--api-sock", "serve the Firecracker-compatible API here (stats, limit changes, "
           "pause/resume)", "PATH"),
    Option("--config-file", "a Firecracker JSON configuration (flags given as well add to "
           "or override it)", "PATH"),
    Option("--stats-file", "write device, limiter and memory counters here at exit", "PATH"),
    Option("--mem-overhead-limit", "run the monitor in its own memory cgroup limited to guest "
           "RAM plus SIZE", "SIZE"),
    Option("--cpu-quota", "CPU time the whole guest may use, in CPUs (e.g. 0.5)", "CPUS",
           _positive_number("--cpu-quota")),
    Option("--cpu-pin", "host CPU for each vCPU, e.g. 0,1", "LIST", _cpu_list),
    Option("--throttle-backoff-ms", "wait at least this long after a throttled request "
           "(Firecracker's fixed back-off; for comparisons)", "MS",
           _whole("--throttle-backoff-ms")),
    Option("--no-seccomp", "install no seccomp filters (they are on with KVMM_SECCOMP=on; "
           "docs/seal.md)", flag=True),
    Option("--quiet", "no monitor messages on stderr", flag=True),
)

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


