"""The lifecycle of one guest: the only object `kvmm run`, `kvmm boot-test`,
the Firecracker API and signal handlers talk to.

    Not started --instance_start()--> Running <--pause()/resume()--> Paused
         Running/Paused --stop() or the guest ends--> Stopped

Before the start the configuration (a kvmm.spec.VmSpec) may change; each
change is checked through the specs and, if refused, changes nothing. After
the start, only what Firecracker allows at run time changes: drive paths and
rate limiters, NIC rate limiters, the metadata store. The Vmm owns the
monitor's event loop (the API server and the devices share it), the built
Machine, the metrics writer and the metadata.

Methods called by the API run on the event-loop thread; errors the user can
fix are ValueErrors (SpecError, ActionError), which the API answers with 400.
"""
from __future__ import annotations

import os
import threading
import time

from kvmm.machine import EXIT_MONITOR, StopReason, install_kick_handler
from kvmm.spec import (
    BootSourceSpec, DriveSpec, LoggerSpec, MachineSpec, MetricsSpec, MmdsConfigSpec,
    NetworkInterfaceSpec, RateLimiterSpec, SpecError, VmSpec,
)
from kvmm.spec.devices import PartialDriveSpec, PartialNetworkInterfaceSpec

NOT_STARTED = "Not started"
RUNNING = "Running"
PAUSED = "Paused"
STOPPED = "Stopped"
MMDS_SIZE_LIMIT = 51200          # Firecracker's default --mmds-size-limit


class ActionError(ValueError):
    """A request that cannot be done in the VM's present state, or failed."""


class Vmm:
    """One guest's lifecycle. `spec` may be empty (the API fills it in)."""

    def __init__(self, spec: VmSpec | None = None, instance_id: str = "anonymous-instance",
                 start_time: float | None = None, console_capture: bool = False,
                 interactive: bool = False, vcpu_name: str = "kvmm-vcpu{}",
                 app_name: str = "kvmm", mmds_size_limit: int = MMDS_SIZE_LIMIT,
                 console_observer=None):
        self.spec = spec or VmSpec()
        self.instance_id = instance_id
        self.app_name = app_name
        self.start_time = time.monotonic() if start_time is None else start_time
        self.console_capture = console_capture
        self.interactive = interactive
        self.console_observer = console_observer   # called with each piece of console output
        self.api = None                 # the API server, when one is served
        self.vcpu_name = vcpu_name
        self.state = NOT_STARTED
        self.machine = None
        self.loop = None
        self.metrics = None             # kvmm.api.metrics.MetricsWriter, once configured
        self.mmds = None                # the metadata store (a JSON value), once PUT
        self.mmds_size_limit = mmds_size_limit
        self.on_ready = None            # called with seconds from start to the guest's ready
        self.stop_reason: StopReason | None = None
        self.build_started: float | None = None     # time.monotonic() at InstanceStart
        self.build_started_cpu = 0.0
        self._stopped = threading.Event()
        self._loop_started = False
        # vCPUs are kicked out of KVM_RUN with a signal whose handler only the
        # main thread can install; the VM may be started from the API's thread.
        install_kick_handler()

    # The event loop. ---------------------------------------------------------
    def event_loop(self):
        """The monitor's EventLoop (made on first use)."""
        if self.loop is None:
            from kvmm.eventloop import EventLoop
            self.loop = EventLoop("kvmm-io")
        return self.loop

    def start_loop(self) -> None:
        if not self._loop_started:
            self.event_loop().start()
            self._loop_started = True

    @property
    def started(self) -> bool:
        return self.state != NOT_STARTED

    # Configuration before the start. ----------------------------------------
    def _preboot(self, what: str) -> None:
        if self.started:
            raise ActionError(f"{what} cannot be changed after the microVM started")

    def _apply(self, change) -> None:
        """Run `change(spec_copy)` on a copy of the configuration and keep it only
        if the whole configuration still checks out: a refused change changes nothing."""
        import copy
        candidate = copy.deepcopy(self.spec)
        change(candidate)
        candidate.validate()
        self.spec = candidate

    def put_machine_config(self, body) -> None:
        self._preboot("machine-config")
        machine = MachineSpec.from_json(body, "machine-config")
        self._apply(lambda s: setattr(s, "machine", machine))

    def patch_machine_config(self, body) -> None:
        self._preboot("machine-config")
        if not isinstance(body, dict):
            raise SpecError("machine-config", "must be a JSON object")
        merged = {**self.spec.machine.to_json(), **body}
        machine = MachineSpec.from_json(merged, "machine-config")
        self._apply(lambda s: setattr(s, "machine", machine))

    def put_boot_source(self, body) -> None:
        self._preboot("boot-source")
        boot = BootSourceSpec.from_json(body, "boot-source")
        self._apply(lambda s: setattr(s, "boot_source", boot))

    def put_drive(self, drive_id: str, body) -> None:
        self._preboot("a drive")
        drive = DriveSpec.from_json(body, f"drives[{drive_id}]")
        self._apply(lambda s: _upsert(s.drives, "drive_id", drive))

    def put_network_interface(self, iface_id: str, body) -> None:
        self._preboot("a network interface")
        nic = NetworkInterfaceSpec.from_json(body, f"network-interfaces[{iface_id}]")
        self._apply(lambda s: _upsert(s.network_interfaces, "iface_id", nic))

    def put_logger(self, body) -> None:
        self._preboot("the logger")
        logger = LoggerSpec.from_json(body, "logger")
        from kvmm.api import logger as log
        log.configure(logger.log_path, logger.level, logger.show_level, logger.show_log_origin,
                      logger.module)
        self.spec.logger = logger

    def put_metrics(self, body) -> None:
        self._preboot("the metrics")
        metrics = MetricsSpec.from_json(body, "metrics")
        if self.metrics is not None:
            raise ActionError("the metrics are already configured; they can be set once")
        self.open_metrics(metrics)

    def open_metrics(self, metrics: MetricsSpec) -> None:
        from kvmm.api.metrics import MetricsWriter
        try:
            self.metrics = MetricsWriter(metrics.metrics_path, self.event_loop(), self.stats)
        except OSError as e:
            raise SpecError("metrics.metrics_path", f"{metrics.metrics_path}: cannot open it "
                                                    f"({e.strerror or e})") from None
        self.spec.metrics = metrics

    def put_mmds_config(self, body) -> None:
        self._preboot("mmds-config")
        config = MmdsConfigSpec.from_json(body, "mmds-config")
        self._apply(lambda s: setattr(s, "mmds_config", config))

    # The metadata store (before and after the start). -----------------------
    def put_mmds(self, body) -> None:
        self._check_mmds_size(body)
        self.mmds = body

    def patch_mmds(self, body) -> None:
        if self.mmds is None:
            raise ActionError("the MMDS data store is not initialized; PUT /mmds first")
        merged = _merge_patch(self.mmds, body)
        self._check_mmds_size(merged)
        self.mmds = merged

    def get_mmds(self):
        if self.mmds is None:
            raise ActionError("the MMDS data store is not initialized")
        return self.mmds

    def _check_mmds_size(self, value) -> None:
        import json
        size = len(json.dumps(value, separators=(",", ":")))
        if size > self.mmds_size_limit:
            raise ActionError(f"the MMDS data store would hold {size} bytes, more than its "
                              f"limit of {self.mmds_size_limit} (--mmds-size-limit)")

    # Starting. ---------------------------------------------------------------
    def prepare(self):
        """Check the configuration and open every host resource (kernel, images,
        TAPs, console) without making any KVM object."""
        from kvmm import builder
        return builder.prepare(self.spec)

    def instance_start(self, prepared=None) -> None:
        """Build the VM and run its vCPUs. Raises SpecError/BootError/a device's
        ValueError for a configuration problem (nothing is left behind), and
        HostNotSupported, KvmError or OSError when the host refuses."""
        if self.started:
            raise ActionError("the microVM is already running")
        from kvmm import builder
        self.build_started = time.monotonic()
        self.build_started_cpu = time.process_time()
        prepared = prepared or builder.prepare(self.spec)
        try:
            m = builder.build(self.spec, prepared, self.event_loop(), start_time=self.start_time,
                              console_capture=self.console_capture,
                              interactive=self.interactive, vcpu_name=self.vcpu_name,
                              console_observer=self.console_observer,
                              build_start=self.build_started)
        except BaseException:
            prepared.close()
            raise
        m.on_ready = self._guest_ready
        m.on_stop = self._machine_stopped
        self.machine = m
        self.state = RUNNING
        self.start_loop()
        if self.metrics is not None:
            self.metrics.start()
        m.start()
        from kvmm.jail.seccomp import seal_after_start
        seal_after_start(self)          # docs/seal.md: the I/O thread's filter

    def _guest_ready(self, seconds: float) -> None:
        """The guest wrote the boot-timer port, `seconds` after the monitor started."""
        if self.on_ready is not None:
            self.on_ready(seconds)

    def boot_time(self) -> tuple[float, float] | None:
        """(wall seconds, CPU seconds) from the start of the VM build (InstanceStart)
        to now, as Firecracker's boot timer counts; None before the build."""
        if self.build_started is None:
            return None
        return (time.monotonic() - self.build_started,
                time.process_time() - self.build_started_cpu)

    def _machine_stopped(self, reason: StopReason) -> None:
        self.stop_reason = reason
        self._stopped.set()

    # Running. ----------------------------------------------------------------
    def _running(self, what: str):
        if self.machine is None or self.state == STOPPED:
            raise ActionError(f"{what}: the microVM is not running")
        return self.machine

    def pause(self) -> None:
        m = self._running("pause")
        if not m.pause():
            raise ActionError("pause: the vCPUs did not stop in time")
        self.state = PAUSED

    def resume(self) -> None:
        m = self._running("resume")
        m.resume()
        self.state = RUNNING

    def send_ctrl_alt_del(self) -> None:
        m = self._running("SendCtrlAltDel")
        m.i8042.send_ctrl_alt_del()

    def flush_metrics(self) -> None:
        if self.metrics is None:
            raise ActionError("the metrics are not configured; PUT /metrics first")
        self.metrics.flush()

    def patch_drive(self, drive_id: str, body) -> None:
        """Firecracker's PartialDrive after the start: a new image path and/or a
        rate limiter (a bucket left out stays; size 0 removes it)."""
        m = self._running("PATCH /drives")
        patch = PartialDriveSpec.from_json(body, "drive")
        spec = _find(self.spec.drives, "drive_id", drive_id, "drive")
        if patch.path_on_host is not None:
            self._replace_image(m, spec, patch.path_on_host)
        if patch.rate_limiter is not None:
            self._patch_limiter(m, f"drive:{drive_id}", spec, "rate_limiter", patch.rate_limiter)

    def _patch_limiter(self, m, target: str, spec, field: str, limiter) -> None:
        """Apply a PATCH to the live limiter `target`, and record it in `spec.field`."""
        m.quota.patch(target, limiter)
        setattr(spec, field, (getattr(spec, field) or RateLimiterSpec()).merged(limiter))

    def _replace_image(self, m, spec: DriveSpec, path: str) -> None:
        from kvmm.virtio.blk import open_drive
        new_spec = spec.replace(path_on_host=path)
        drive = open_drive(new_spec)
        transport = m.device(f"virtio-blk:{spec.drive_id}")
        try:
            old = transport.device.replace_drive(drive)
        except ValueError:
            drive.close()
            raise
        m.own(drive.close)
        old.close()
        transport.config_changed()
        spec.path_on_host = path

    def patch_network_interface(self, iface_id: str, body) -> None:
        """Firecracker's PartialNetworkInterface after the start: rate limiters."""
        m = self._running("PATCH /network-interfaces")
        patch = PartialNetworkInterfaceSpec.from_json(body, "network-interface")
        spec = _find(self.spec.network_interfaces, "iface_id", iface_id, "network interface")
        for direction in ("rx", "tx"):
            field = f"{direction}_rate_limiter"
            limiter = getattr(patch, field)
            if limiter is not None:
                self._patch_limiter(m, f"net:{iface_id}:{direction}", spec, field, limiter)

    def patch_rate_limiter(self, target: str, body) -> None:
        """kvmm's own: any limiter by target (drive:ID, net:ID:rx|tx, drives, nets:rx|tx)."""
        m = self._running("PATCH /kvmm/rate-limiters")
        limiter = RateLimiterSpec.from_json(body, "rate_limiter")
        if m.quota is None:
            raise ActionError("this guest has no drive or network interface to limit")
        try:
            m.quota.patch(target, limiter)
        except ValueError as e:
            raise ActionError(str(e)) from None
        current = self.spec.rate_limiter(target) or RateLimiterSpec()
        self.spec.set_rate_limiter(target, current.merged(limiter), "rate_limiter")

    # Reading. ----------------------------------------------------------------
    def instance_info(self) -> dict:
        from kvmm.version import FIRECRACKER_VERSION
        state = self.state if self.state != STOPPED else PAUSED
        return {"app_name": self.app_name, "id": self.instance_id, "state": state,
                "vmm_version": FIRECRACKER_VERSION}

    def version(self) -> str:
        from kvmm.version import FIRECRACKER_VERSION
        return FIRECRACKER_VERSION

    def get_vm_config(self) -> dict:
        return self.spec.to_json()

    def get_machine_config(self) -> dict:
        return self.spec.machine.to_json()

    def stats(self) -> dict:
        """Counters of the guest: devices, rate limiters, memory, exits, CPU."""
        m = self.machine
        out = {"state": self.state, "devices": {}, "limits": {}}
        memory = {"guest_ram": self.spec.machine.mem_size}
        if m is not None:
            out["limits"] = m.quota.stats() if m.quota else {}
            for transport in m.virtio_devices:
                out["devices"][transport.name] = transport.stats()
            if m.mem is not None:
                memory["guest_ram_touched"] = m.mem.resident_bytes()
            if m.cgroup is not None:
                memory["cgroup"] = m.cgroup.memory_usage()
            out["exits"] = {f"vcpu{t.vcpu.index}": t.exits for t in m.threads}
        try:
            import psutil
            info = psutil.Process().memory_full_info()
            memory.update(monitor_rss=info.rss, monitor_pss=info.pss, monitor_uss=info.uss)
        except (ImportError, OSError):
            pass
        out["memory"] = memory
        times = os.times()
        out["cpu"] = {"seconds": times.user + times.system,
                      "wall": time.monotonic() - self.start_time}
        if m is not None:
            out["cpu"]["affinity"] = {f"vcpu{t.vcpu.index}": sorted(t.affinity)
                                      for t in m.threads}
            if m.cgroup is not None:        # what a quota bounds: time inside the cgroup
                out["cpu"]["cgroup"] = m.cgroup.cpu_usage()
        return out

    # Stopping. ---------------------------------------------------------------
    def stop(self, status: int = 0, message: str = "stopped by request") -> None:
        """Stop the guest (any thread, or a signal handler); wait() then returns."""
        if self.machine is not None:
            self.machine.stop(status, message)
        else:
            self._machine_stopped(StopReason("stopped", status, message))

    def wait(self, timeout: float | None = None) -> StopReason:
        """Block until the guest stops: by itself, by stop(), or when `timeout`
        seconds pass (then it is stopped with a register dump)."""
        if self.machine is None:
            self._stopped.wait()
            return self.stop_reason
        reason = self.machine.wait(timeout)
        self.state = STOPPED
        self.stop_reason = reason
        return reason

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait for a stop without stopping anything (e.g. before the start)."""
        return self._stopped.wait(timeout)

    def flush_disks(self) -> None:
        """fdatasync every writable image (an orderly stop)."""
        m = self.machine
        if m is None:
            return
        for transport in m.virtio_devices:
            drive = getattr(transport.device, "drive", None)
            if drive is not None and not drive.read_only and drive.fd >= 0:
                try:
                    os.fdatasync(drive.fd)
                except OSError:
                    pass

    def release_for_exit(self) -> None:
        """Before the process exits: flush the metrics, stop the guest, undo what
        process exit would not (terminal mode, cgroups)."""
        if self.metrics is not None:
            try:
                self.metrics.flush()
            except OSError:
                pass
        if self.machine is not None:
            if not self.machine.stopping:
                self.machine.stop(0, "closed")
            if self.loop is not None:
                self.loop.stop()        # no device work runs past this point
            self.flush_disks()
            self.machine.release_for_exit()
        if self.api is not None:
            self.api.close()

    def close(self) -> None:
        """Tear everything down (tests and embedders; a CLI uses release_for_exit)."""
        if self.machine is not None:
            self.machine.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.api is not None:
            self.api.close()
        if self.loop is not None:
            self.loop.close()
        self.state = STOPPED

    def __enter__(self) -> Vmm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _upsert(items: list, key: str, spec) -> None:
    for i, old in enumerate(items):
        if getattr(old, key) == getattr(spec, key):
            items[i] = spec
            return
    items.append(spec)


def _find(items: list, key: str, value: str, what: str):
    for item in items:
        if getattr(item, key) == value:
            return item
    raise ActionError(f"no {what} with id {value!r} in this microVM; ids: "
                      f"{', '.join(getattr(i, key) for i in items) or 'none'}")


def _merge_patch(target, patch):
    """RFC 7396 JSON merge patch (what Firecracker's PATCH /mmds applies)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


__all__ = ["Vmm", "ActionError", "NOT_STARTED", "RUNNING", "PAUSED", "STOPPED", "EXIT_MONITOR"]
