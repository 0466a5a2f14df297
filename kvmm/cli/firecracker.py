"""`kvmm firecracker` (the `kvmm-firecracker` script): a drop-in for the
`firecracker` binary. Firecracker's flags, its API on --api-sock, its process
and thread names (`firecracker`, `fc_vcpu N`), its --version format.

Exit status: 0 when the guest stops (power-off, reset, Ctrl-Alt-Del) or a
SIGTERM, SIGINT or SIGHUP stops it in order (disks flushed); 2 for a bad flag
or --config-file (one line on stderr, nothing started); 1 when the guest
crashes its vCPU or the monitor fails.
"""
from __future__ import annotations

import os
import sys

from kvmm.cli.options import Option, _whole

DEFAULT_API_SOCK = "/run/firecracker.socket"
DEFAULT_ID = "anonymous-instance"
ID_MAX = 64
MAX_PAYLOAD = 51200              # Firecracker's default --http-api-max-payload-size
PROCESS_NAME = "firecracker"
VCPU_THREAD = "fc_vcpu {}"       # Firecracker's vCPU thread names; Kata looks for them
EXIT_OK, EXIT_ERROR, EXIT_BAD_CONFIG = 0, 1, 2


def _flag(name: str, help: str) -> Option:
    return Option(name, help, flag=True)


OPTIONS = (
    Option("--api-sock", f"path of the API socket (default {DEFAULT_API_SOCK})", "PATH",
           default=DEFAULT_API_SOCK),
    Option("--id", f"the microVM's id (default {DEFAULT_ID}): 1-{ID_MAX} letters, digits "
           "and '-'", "ID", default=DEFAULT_ID),
    Option("--config-file", "Firecracker's JSON configuration; the microVM boots at once",
           "PATH"),
    _flag("--no-api", "serve no API (needs --config-file)"),
    _flag("--boot-timer", "log the time from start to the guest's ready signal"),
    Option("--level", "log level: Error, Warning, Info (default), Debug, Trace, Off", "LEVEL"),
    Option("--log-path", "log to this file or named pipe (default with --level: stdout)",
           "PATH"),
    _flag("--show-level", "put the level in each log line"),
    _flag("--show-log-origin", "put the file and line in each log line"),
    Option("--module", "log only from this module", "MODULE"),
    Option("--metrics-path", "write metrics (JSON lines) to this file or named pipe", "PATH"),
    Option("--metadata", "a JSON file to load into the metadata store (MMDS)", "PATH"),
    Option("--seccomp-filter", "refused: Firecracker's BPF files are compiled for "
           "Firecracker; kvmm has its own filters (docs/seal.md)", "PATH"),
    _flag("--no-seccomp", "no seccomp filters (docs/seal.md: KVMM_SECCOMP=on turns "
          "kvmm's on)"),
    Option("--http-api-max-payload-size", f"largest API request body in bytes (default "
           f"{MAX_PAYLOAD})", "BYTES", _whole("--http-api-max-payload-size"),
           default=MAX_PAYLOAD),
    Option("--mmds-size-limit", "largest metadata store in bytes (default: the payload "
           "limit)", "BYTES", _whole("--mmds-size-limit")),
    Option("--start-time-us", "process start time (from the jailer)", "US",
           _whole("--start-time-us")),
    Option("--start-time-cpu-us", "process start CPU time (from the jailer)", "US",
           _whole("--start-time-cpu-us")),
    Option("--parent-cpu-time-us", "the jailer's CPU time", "US", _whole("--parent-cpu-time-us")),
    _flag("--version", "print the version and exit"),
)

HELP = """usage: kvmm firecracker [options]   (or: kvmm-firecracker, installed as `firecracker`)

Firecracker's command line and REST API over a Unix socket: configure the
microVM with PUT /machine-config, /boot-source, /drives/ID, /network-interfaces/ID,
then PUT /actions {"action_type": "InstanceStart"}; or give --config-file.
"""


def _die(message: str, status: int = EXIT_BAD_CONFIG) -> int:
    print(f"kvmm firecracker: {message}", file=sys.stderr)
    return status


def _check_id(text: str) -> str | None:
    if not 0 < len(text) <= ID_MAX or not all(c.isascii() and (c.isalnum() or c == "-")
                                               for c in text):
        return (f"--id {text!r}: give 1-{ID_MAX} characters, each a letter, a digit or '-'")
    return None


def command(args, start: float) -> int:
    from kvmm.procname import set_thread_name
    set_thread_name(PROCESS_NAME)
    if args.version:
        from kvmm.version import version_lines
        print("\n".join(version_lines(firecracker=True)))
        return EXIT_OK
    problem = _check_id(args.id)
    if problem:
        return _die(problem)
    if args.no_api and not args.config_file:
        return _die("--no-api needs --config-file (there is no other way to configure the "
                    "microVM)")
    if args.http_api_max_payload_size <= 0:
        return _die("--http-api-max-payload-size: give a positive number of bytes")
    from kvmm.boot.errors import BootError
    from kvmm.spec import LoggerSpec, MetricsSpec, SpecError, VmSpec
    from kvmm.vmm import Vmm
    interactive = os.isatty(0) and os.isatty(1)
    vmm = Vmm(instance_id=args.id, start_time=start, interactive=interactive,
              vcpu_name=VCPU_THREAD, app_name="Firecracker",
              mmds_size_limit=args.mmds_size_limit or args.http_api_max_payload_size)
    log = None
    try:
        if args.config_file:
            vmm.spec = VmSpec.from_file(args.config_file)
        logger = vmm.spec.logger
        if args.log_path or args.level or args.show_level or args.show_log_origin:
            logger = LoggerSpec.from_json(
                {"log_path": args.log_path, "level": args.level or "Info",
                 "show_level": args.show_level, "show_log_origin": args.show_log_origin,
                 "module": args.module}, "logger",
                {"log_path": "--log-path", "level": "--level"})
        if logger is not None:
            log = _configure_logger(vmm, logger)
        metrics = vmm.spec.metrics
        if args.metrics_path:
            metrics = MetricsSpec(metrics_path=args.metrics_path)
        if metrics is not None:
            vmm.open_metrics(metrics)
        if args.metadata:
            vmm.put_mmds(_read_json(args.metadata, "--metadata"))
    except (SpecError, ValueError) as e:
        return _die(str(e))
    if log is None and args.boot_timer:     # the boot time is said even with no logger
        from kvmm.spec import LoggerSpec as _LoggerSpec
        log = _configure_logger(vmm, _LoggerSpec(log_path="/dev/stderr", level="Info"))
    if log is not None:                     # no logger, no logging import: a lean start
        log.info("Running Firecracker v%s (kvmm)", vmm.version())
    from kvmm.jail.seccomp import check_firecracker_flags
    if problem := check_firecracker_flags(args):     # docs/seal.md
        return _die(problem)
    if args.boot_timer:
        vmm.on_ready = lambda _seconds: _log_boot_time(vmm, log)
    from kvmm.cli.run import install_stop_signals
    install_stop_signals(vmm)
    if args.config_file:
        # As Firecracker: the microVM is built and started before the API serves.
        from kvmm.ioctl import HostNotSupported, KvmError
        try:
            vmm.instance_start()
        except (SpecError, BootError, HostNotSupported, ValueError) as e:
            vmm.release_for_exit()
            return _die(f"--config-file {args.config_file}: {e}")
        except (KvmError, OSError) as e:
            vmm.release_for_exit()
            return _die(f"could not create the microVM: {e}", EXIT_ERROR)
    if not args.no_api:
        from kvmm.api.firecracker import serve
        try:
            vmm.api = serve(args.api_sock, vmm.event_loop(), vmm,
                            max_body=args.http_api_max_payload_size)
        except OSError as e:
            vmm.stop(1, str(e))
            vmm.release_for_exit()
            return _die(str(e), EXIT_ERROR)
        vmm.start_loop()
        if not vmm.started:
            # What InstanceStart needs, loaded while the client configures the VM.
            import kvmm.builder  # noqa: F401
            import kvmm.virtio.blk  # noqa: F401
            import kvmm.virtio.mmio  # noqa: F401
    return _serve_until_stopped(vmm, log)


def _log_boot_time(vmm, log) -> None:
    """Firecracker's boot-timer line: wall and CPU time from InstanceStart (the
    start of the VM build) to the guest's ready write."""
    wall, cpu = vmm.boot_time()
    log.info("Guest-boot-time = %6d us %d ms, %6d CPU us %d CPU ms", wall * 1e6, wall * 1e3,
             cpu * 1e6, cpu * 1e3)


def _serve_until_stopped(vmm, log) -> int:
    from kvmm.jail.seccomp import seal_thread
    seal_thread("main")              # docs/seal.md
    vmm.wait_stopped()
    reason = vmm.wait() if vmm.machine is not None else vmm.stop_reason
    if log is not None:
        log.info("Vmm is stopping: %s", reason.message)
    vmm.release_for_exit()
    if reason.kind in ("crash", "error"):
        print(f"kvmm firecracker: {reason.message}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _configure_logger(vmm, logger):
    from kvmm.api import logger as fclog
    try:
        fclog.configure(logger.log_path, logger.level, logger.show_level,
                        logger.show_log_origin, logger.module, instance_id=vmm.instance_id)
    except OSError as e:
        from kvmm.spec import SpecError
        raise SpecError("--log-path", f"{logger.log_path}: cannot open it ({e.strerror or e})") \
            from None
    vmm.spec.logger = logger
    import logging
    return logging.getLogger("kvmm.firecracker")


def _read_json(path: str, what: str):
    import json
    from kvmm.spec import SpecError
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except OSError as e:
        raise SpecError(f"{what} {path}", f"cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise SpecError(f"{what} {path}", f"is not valid JSON ({e})") from None
