"""`kvmm run` and `kvmm boot-test`: command-line flags to a VmSpec, then the
lifecycle (kvmm.vmm.Vmm). Both take the same options and honour all of them.
"""
from __future__ import annotations

import os
import sys

from kvmm.cli.options import RUN_OPTIONS, Namespace, Option, UsageError, _seconds
from kvmm.machine import EXIT_MONITOR
from kvmm.spec import (
    BootSourceSpec, DriveSpec, HostSpec, MachineSpec, NetworkInterfaceSpec, RateLimiterSpec,
    SpecError, VmSpec, parse_amount,
)

USAGE_ERROR = 2

RUN_HELP = """usage: kvmm run [options]

Boot a guest kernel and wait for it. Exit status: the guest's own (port 0xf4),
0 on a guest reset or power-off (or SIGTERM, SIGINT, SIGHUP: the guest is
stopped in order), 2 for a bad configuration or image (nothing is started),
124 on --timeout, 125 when the guest crashes its vCPU, 126 for a monitor error.
"""

# Where each setting comes from on the command line, for error messages.
LABELS = {"vcpu_count": "--vcpus", "mem_size_mib": "--mem", "kernel_image_path": "--kernel",
          "initrd_path": "--initrd", "boot_args": "--cmdline", "console": "--console",
          "timeout": "--timeout", "mem_backing": "--mem-backing", "hide_cpuid": "--hide-cpuid",
          "mem_overhead_limit_mib": "--mem-overhead-limit", "cpu_quota": "--cpu-quota",
          "cpu_pin": "--cpu-pin", "throttle_backoff_ms": "--throttle-backoff-ms",
          "stats_file": "--stats-file", "mem_prefault": "--mem-prefault",
          "mem_lock": "--mem-lock"}


def die(message: str, status: int = USAGE_ERROR) -> int:
    print(f"kvmm: {message}", file=sys.stderr)
    return status


def _given(args: Namespace, pairs: dict) -> dict:
    """The JSON fields whose flags were given."""
    return {field: value for field, value in pairs.items() if value is not None}


def spec_from_args(args: Namespace) -> VmSpec:
    """Flags (and --config-file) to one checked VmSpec; SpecError names the flag."""
    from kvmm.guest_image import default_kernel
    spec = VmSpec.from_file(args.config_file) if args.config_file else VmSpec()
    spec.labels = dict(LABELS)
    mem_mib = None
    if args.mem is not None:
        mem = parse_amount(args.mem, "--mem", default_unit="M")
        if mem % (1 << 20):
            raise SpecError("--mem", f"{args.mem!r}: give whole MiB (e.g. 64M)")
        mem_mib = mem >> 20
    machine = {**spec.machine.to_json(), **_given(args, {"vcpu_count": args.vcpus,
                                                         "mem_size_mib": mem_mib})}
    spec.machine = MachineSpec.from_json(machine, "machine-config", LABELS)
    boot = spec.boot_source.to_json() if spec.boot_source else {}
    boot.update(_given(args, {"kernel_image_path": args.kernel, "initrd_path": args.initrd,
                              "boot_args": args.cmdline}))
    boot.setdefault("kernel_image_path", default_kernel())
    spec.boot_source = BootSourceSpec.from_json(boot, "boot-source", LABELS)
    first = len(spec.drives)
    spec.drives += [DriveSpec.from_cli_option(t, first + i) for i, t in enumerate(args.drive)]
    spec.network_interfaces += NetworkInterfaceSpec.from_cli_options(args.net)
    spec.host = HostSpec.from_json(_host_json(args, spec.host), "kvmm", LABELS)
    if args.drive_group:
        spec.host.drive_group = RateLimiterSpec.from_group_option(
            args.drive_group, "--drive-group")[""]
    if args.net_group:
        groups = RateLimiterSpec.from_group_option(args.net_group, "--net-group", ("rx_", "tx_"))
        spec.host.net_rx_group, spec.host.net_tx_group = groups["rx_"], groups["tx_"]
    if args.rate_limit:
        _rate_limits(spec, args.rate_limit)
    spec.validate(booting=True)
    return spec


def _host_json(args: Namespace, host: HostSpec) -> dict:
    out = host.to_json()
    overhead = None
    if args.mem_overhead_limit is not None:
        size = parse_amount(args.mem_overhead_limit, "--mem-overhead-limit", default_unit="M")
        overhead = -(-size >> 20)
    out.update(_given(args, {
        "console": args.console, "timeout": args.timeout, "mem_backing": args.mem_backing,
        "mem_overhead_limit_mib": overhead, "cpu_quota": args.cpu_quota,
        "cpu_pin": args.cpu_pin, "throttle_backoff_ms": args.throttle_backoff_ms,
        "stats_file": args.stats_file}))
    if args.mem_prefault:
        out["mem_prefault"] = True
    if args.mem_lock:
        out["mem_lock"] = True
    if args.hide_cpuid:
        out["hide_cpuid"] = list(args.hide_cpuid)
    for key in ("drive_group", "net_rx_group", "net_tx_group"):
        if out[key] is not None:
            out[key] = getattr(host, key).to_json()
    return out


def _rate_limits(spec: VmSpec, items: list[str]) -> None:
    import json
    seen = set()
    for item in items:
        target, eq, text = item.partition("=")
        where = f"--rate-limit {target}"
        if not eq:
            raise SpecError(f"--rate-limit {item!r}", "write TARGET=JSON")
        if target in seen:
            raise SpecError(where, "is given twice")
        seen.add(target)
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise SpecError(where, f"not JSON ({e})") from None
        spec.set_rate_limiter(target, RateLimiterSpec.from_json(obj, where), where)


def _emulation_warning(prepared, spec: VmSpec, quiet: bool) -> None:
    """One line before boot when the host's software-virtualization KVM will run
    this kernel in its instruction emulator."""
    if quiet:
        return
    from kvmm.boot.native import emulation_warning, pvm_host
    if pvm_host():
        warning = emulation_warning(prepared.image, spec.boot_source.kernel_image_path)
        if warning:
            print(f"kvmm: warning: {warning}", file=sys.stderr)


def install_stop_signals(vmm, signals=None) -> None:
    """SIGTERM, SIGINT and SIGHUP stop the guest in order (main thread only)."""
    import _signal as signal
    for signum in signals or (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        name = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT",
                signal.SIGHUP: "SIGHUP"}.get(signum, str(signum))
        signal.signal(signum, lambda _n, _f, name=name: vmm.stop(0, f"stopped by {name}"))


def start_vmm(spec: VmSpec, args: Namespace, start: float, *, console_capture: bool = False,
              interactive: bool | None = None, console_observer=None):
    """The shared start of `run` and `boot-test`: host resources, the API
    socket, the VM. Returns (vmm, exit status or None)."""
    from kvmm.boot.errors import BootError
    from kvmm.jail.seccomp import configure
    from kvmm.vmm import Vmm
    configure("off" if args.no_seccomp else None)       # docs/seal.md
    if interactive is None:
        interactive = spec.host.console == "stdout" and os.isatty(0) and os.isatty(1)
    vmm = Vmm(spec, start_time=start, console_capture=console_capture, interactive=interactive,
              console_observer=console_observer)
    try:
        prepared = vmm.prepare()
    except (BootError, ValueError) as e:
        return None, die(str(e))
    _emulation_warning(prepared, spec, getattr(args, "quiet", False))
    if args.api_sock:
        from kvmm.api.firecracker import serve
        try:
            vmm.api = serve(args.api_sock, vmm.event_loop(), vmm)
        except OSError as e:
            prepared.close()
            return None, die(str(e))
    from kvmm.ioctl import HostNotSupported, KvmError
    try:
        vmm.instance_start(prepared)
    except BaseException as e:
        if vmm.api is not None:
            vmm.api.close()             # no socket is left behind
        if isinstance(e, (HostNotSupported, BootError, ValueError)):
            return None, die(str(e))
        if isinstance(e, (KvmError, OSError)):
            return None, die(f"could not create the VM: {e}", EXIT_MONITOR)
        raise
    install_stop_signals(vmm)
    return vmm, None


def run_command(args: Namespace, start: float) -> int:
    try:
        spec = spec_from_args(args)
    except (SpecError, UsageError) as e:
        return die(str(e))
    vmm, status = start_vmm(spec, args, start)
    if vmm is None:
        return status
    from kvmm.jail import seccomp
    seccomp.seal_thread("main")     # docs/seal.md
    try:
        reason = vmm.wait(vmm.spec.host.timeout)
        if vmm.spec.host.stats_file:
            _write_stats(vmm.spec.host.stats_file, vmm, reason)
    finally:
        vmm.release_for_exit()      # the process exits next: no need to unmap or join
    if not args.quiet:
        for line in vmm.machine.report_lines:
            print(f"kvmm: {line}", file=sys.stderr)
        if reason.kind in ("crash", "timeout", "error"):
            print(f"kvmm: {reason.message}", file=sys.stderr)
    return reason.status


def _write_stats(path: str, vmm, reason) -> None:
    import json
    stats = vmm.stats()
    stats["stop"] = {"kind": reason.kind, "status": reason.status}
    try:
        with open(path, "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
    except OSError as e:
        print(f"kvmm: --stats-file {path}: cannot write it ({e.strerror})", file=sys.stderr)


def _boot_test_option(o: Option) -> Option:
    if o.name == "--timeout":
        return Option("--timeout", "give up after S seconds (default 120)", "S", _seconds,
                      default=120.0)
    if o.name == "--quiet":
        return Option("--quiet", "only the verdict on stderr", flag=True)
    return o


BOOT_TEST_OPTIONS = tuple(_boot_test_option(o) for o in RUN_OPTIONS) + (
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
)

BOOT_TEST_HELP = """usage: kvmm boot-test --kernel PATH --success TEXT [options]

Boot a kernel and watch its serial console: PASS when a --success pattern
appears (with --wait-exit: and the guest then stops by itself), FAIL on a
--failure pattern, a crash, a guest that stops first, or --timeout (the
register dump and the last console lines are printed). The time from the
monitor's start to the success pattern is printed. Every option of `kvmm run`
applies. Exit status: 0 pass (or skipped when /dev/kvm is unusable, unless
--require-kvm), 1 fail, 2 nothing ran (bad option or image, or --require-kvm
refused).
"""


def boot_test_command(args: Namespace, start: float) -> int:
    from kvmm import boottest
    if not args.success:
        return die("boot-test needs at least one --success pattern")
    if args.regex:
        import re
        for p in args.success + args.failure:
            try:
                re.compile(p)
            except re.error as e:
                return die(f"pattern {p!r} is not a regular expression ({e})")
    try:
        spec = spec_from_args(args)     # every option checked before /dev/kvm is asked
    except (SpecError, UsageError) as e:
        return die(str(e))
    from kvmm.guest_image import default_kernel
    name = args.name or os.path.basename(args.kernel or default_kernel())
    problem = boottest.kvm_problem()
    if problem is not None:
        if args.require_kvm:
            return die(f"--require-kvm: /dev/kvm cannot run guests here: {problem}")
        outcome = boottest.Outcome(boottest.SKIP, f"/dev/kvm cannot run guests here: {problem}")
        boottest.report(outcome)
        if args.junit:
            boottest.write_junit(args.junit, name, outcome)
        return 0
    watcher = boottest.Watcher(args.success, args.failure or list(boottest.DEFAULT_FAILURE),
                               regex=args.regex)
    vmm, status = start_vmm(spec, args, start, console_capture=True, interactive=False,
                            console_observer=watcher.feed)
    if vmm is None:
        return 1 if status == EXIT_MONITOR else status
    stats_file = spec.host.stats_file
    outcome = boottest.watch(vmm, watcher, start, wait_exit=args.wait_exit,
                             on_stopped=(lambda v, reason: _write_stats(stats_file, v, reason))
                             if stats_file else None)
    boottest.report(outcome, quiet=args.quiet)
    if args.junit:
        try:
            boottest.write_junit(args.junit, name, outcome)
        except OSError as e:
            return die(f"--junit {args.junit}: cannot write it ({e.strerror})", 1)
    return 0 if outcome.result == boottest.PASS else 1
