"""The builder: turns a checked VmConfig into a running VM, and the Machine
that owns it (KVM fds, guest memory, vCPU threads, buses, devices, the I/O
thread). Devices, memory and vCPUs know nothing of each other; this module
wires them together.
"""
from __future__ import annotations

import os
import sys
import threading
import time

# The C half of `signal` (the Python half imports enum, which costs more than
# booting a VM); only pthread_kill, signal and getsignal are used.
import _signal as signal  # noqa: I001

from kvmm.arch.x86_64 import acpi, e820, gdt, layout, mptable, paging
from kvmm.cleanup import Cleanup
from kvmm.boot import initrd as initrd_loader, loader, params
from kvmm.boot.errors import BootError
from kvmm.config import ConfigError, VmConfig
from kvmm.devices.acpi_sleep import AcpiSleep
from kvmm.devices.bus import Bus
from kvmm.devices.irq import EventFdTrigger
from kvmm.devices.legacy import I8042, BootTimer, DebugExit, Sink
from kvmm.devices.serial import REGISTER_COUNT, ConsoleSink, Serial
from kvmm.ioctl import Kvm, numbers as n
from kvmm.memory import GuestMemory
from kvmm.vcpu import setup
from kvmm.vcpu.dump import format_registers
from kvmm.vcpu.runloop import VcpuThread

# Exit statuses of the monitor itself (the guest's own status is 0-255 via port 0xf4).
EXIT_CONFIG = 2
EXIT_TIMEOUT = 124
EXIT_CRASH = 125
EXIT_MONITOR = 126
TSS_ADDR = 0xFFFBD000          # three pages KVM/VMX needs below 4 GiB (Firecracker's choice)
KICK_SIGNAL = signal.SIGUSR1


class StopReason:
    """Why a machine stopped: `kind` is "exit", "reset", "crash", "timeout",
    "stopped" or "error"; `status` is the exit status kvmm reports."""
    __slots__ = ("kind", "status", "message")

    def __init__(self, kind: str, status: int, message: str = ""):
        self.kind = kind
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"StopReason({self.kind!r}, {self.status}, {self.message!r})"


def _install_kick_handler() -> None:
    """vCPU threads are kicked out of KVM_RUN with a signal; it needs a handler
    (the default action would kill the process)."""
    try:
        if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
            signal.signal(KICK_SIGNAL, lambda *_: None)
    except ValueError:
        pass  # not the main thread; the embedding program must have set one


class Machine:
    """A live VM. Build it with `build(config)`; `start()`, then `wait()`."""

    def __init__(self, config: VmConfig, start_time: float | None = None):
        self.config = config
        self.created = time.monotonic() if start_time is None else start_time
        self.stopping = False
        self.stop_reason: StopReason | None = None
        self._stopped = threading.Event()
        self._paused = False
        self._pause_cond = threading.Condition()
        self._parked = 0
        self.threads: list[VcpuThread] = []
        self.vcpus = []
        self.report_lines: list[str] = []
        self._cleanup = Cleanup()
        self.pio_bus = Bus("port I/O", 0x10000)
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self.loop = None
        self.mem: GuestMemory | None = None
        self.vm = None
        self.kvm = None
        self.pvm = False
        self.boot_timer = BootTimer(self.created, self._log_ready)
        self.virtio_devices: list = []
        self.quota = None          # kvmm.quota.guest.GuestQuota, when there are devices
        self.cgroup = None         # kvmm.quota.cgroup.GuestCgroup, when limits ask for one
        self.control = None        # kvmm.api.control.ControlServer, with --api-sock

    # Life cycle. -----------------------------------------------------------
    def start(self) -> None:
        _install_kick_handler()
        if self.loop is not None:
            self.loop.start()
        for vcpu in self.vcpus:
            t = VcpuThread(self, vcpu)
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def wait(self, timeout: float | None = None) -> StopReason:
        """Block until the guest stops (or `timeout` passes: then stop it)."""
        if not self._stopped.wait(timeout):
            self._timeout(timeout)
        self._join()
        if self.console is not None:
            self.console.flush()
        assert self.stop_reason is not None
        return self.stop_reason

    def _timeout(self, timeout: float | None) -> None:
        paused = self.pause(wait=2.0)
        lines = [f"the guest did not finish within {timeout:g} s; stopped it"]
        if paused:
            lines += [format_registers(v) for v in self.vcpus]
        else:
            lines.append("(vCPUs did not stop for a register dump)")
        lines += self._console_tail()
        self._request_stop(StopReason("timeout", EXIT_TIMEOUT, "\n".join(lines)))
        self.resume()

    def _join(self) -> None:
        self._kick_all()
        for t in self.threads:
            t.join(timeout=5)

    def close(self) -> None:
        if not self.stopping:
            self._request_stop(StopReason("stopped", 0, "closed"))
        self._join()
        if self.loop is not None:
            self.loop.stop()
        self._cleanup.close()

    def release_for_exit(self) -> None:
        """Before the process exits: stop, flush, and undo only what process exit
        would not (terminal mode, cgroups); fds and guest RAM go with the process.

        Destroying a VM with an in-kernel irqchip and PIT takes the kernel
        10-20 ms (grace periods). A child process keeps the KVM fds open until
        this process has exited and then drops the last references, so the
        monitor's exit (and its status) does not wait for that."""
        if not self.stopping:
            self._request_stop(StopReason("stopped", 0, "closed"))
        if self.console is not None:
            self.console.flush()
        self._cleanup.close(essential_only=True)
        self._hand_off_teardown()

    def _hand_off_teardown(self) -> None:
        keep = [fd for fd in [getattr(self.kvm, "fd", -1), getattr(self.vm, "fd", -1)]
                + [v.fd for v in self.vcpus] if fd >= 0]
        if not keep:
            return
        try:
            rfd, wfd = os.pipe()
            pid = os.fork()
        except OSError:
            return          # the process exit will tear the VM down instead
        if pid == 0:        # the child: hold the KVM fds until the parent is gone
            try:
                os.close(wfd)
                keep = sorted(keep + [rfd])
                low = 0
                for fd in keep:
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 20)
                os.read(rfd, 1)         # EOF when the parent has exited
            finally:
                os._exit(0)
        os.close(rfd)       # wfd stays open until this process exits

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Control from other threads. -------------------------------------------
    def _kick_all(self) -> None:
        for vcpu in self.vcpus:
            if vcpu.fd >= 0 and vcpu.run_struct is not None:
                vcpu.set_immediate_exit(True)
        for t in self.threads:
            if t.is_alive() and t.ident is not None:
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)
                except OSError:
                    pass  # the thread has just ended

    def pause(self, wait: float = 5.0) -> bool:
        """Stop all vCPUs outside KVM_RUN; True once every running one is parked."""
        with self._pause_cond:
            self._paused = True
        self._kick_all()
        deadline = time.monotonic() + wait
        with self._pause_cond:
            while self._parked < sum(t.is_alive() for t in self.threads):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pause_cond.wait(min(left, 0.05))
                if self._parked < sum(t.is_alive() for t in self.threads):
                    self._kick_all()
        return True

    def resume(self) -> None:
        with self._pause_cond:
            self._paused = False
            self._pause_cond.notify_all()

    def stop(self, status: int = 0, message: str = "stopped by request") -> None:
        self._request_stop(StopReason("stopped", status, message))

    @property
    def paused(self) -> bool:
        return self._paused

    def _request_stop(self, reason: StopReason) -> None:
        with self._pause_cond:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.stopping = True
            self._pause_cond.notify_all()
        self._kick_all()
        self._stopped.set()

    # Called on vCPU threads. -----------------------------------------------
    def vcpu_interrupted(self, vcpu) -> bool:
        """A vCPU left KVM_RUN early; park it while paused. False: stop running."""
        vcpu.set_immediate_exit(False)
        with self._pause_cond:
            if self._paused and not self.stopping:
                self._parked += 1
                self._pause_cond.notify_all()
                while self._paused and not self.stopping:
                    self._pause_cond.wait()
                self._parked -= 1
        if self.stopping:
            return False
        vcpu.set_immediate_exit(False)
        return True

    def fatal(self, vcpu, what: str) -> None:
        lines = [f"vcpu{vcpu.index}: {what}", format_registers(vcpu)]
        lines += self._console_tail()
        self._request_stop(StopReason("crash", EXIT_CRASH, "\n".join(lines)))

    def system_event(self, vcpu, kind: int) -> None:
        if kind == n.KVM_SYSTEM_EVENT_RESET:
            self._request_stop(StopReason("reset", 0, "the guest reset the machine"))
        elif kind == n.KVM_SYSTEM_EVENT_SHUTDOWN:
            self._request_stop(StopReason("exit", 0, "the guest powered off"))
        else:
            self.fatal(vcpu, f"system event {kind} (crash)")

    def guest_exit(self, status: int) -> None:
        self._request_stop(StopReason("exit", status, f"the guest exited with status {status}"))

    def guest_reset(self) -> None:
        self._request_stop(StopReason("reset", 0, "the guest reset the machine (i8042)"))

    def _log_ready(self, seconds: float) -> None:
        self.report_lines.append(f"boot timer: guest ready {seconds * 1e3:.2f} ms after "
                                 "the monitor started")

    def stats(self) -> dict:
        """Counters of the running guest: devices, rate limiters, memory."""
        out = {"devices": {}, "limits": self.quota.stats() if self.quota else {}}
        for transport in self.virtio_devices:
            out["devices"][transport.name] = transport.stats()
        memory = {"guest_ram": self.config.mem_size}
        if self.mem is not None:
            memory["guest_ram_touched"] = self.mem.resident_bytes()
        try:
            import psutil
            info = psutil.Process().memory_full_info()
            memory.update(monitor_rss=info.rss, monitor_pss=info.pss, monitor_uss=info.uss)
        except (ImportError, OSError):
            pass
        if self.cgroup is not None:
            memory["cgroup"] = self.cgroup.memory_usage()
        out["memory"] = memory
        out["exits"] = {f"vcpu{t.vcpu.index}": t.exits for t in self.threads}
        times = os.times()
        out["cpu"] = {"seconds": times.user + times.system,
                      "wall": time.monotonic() - self.created,
                      "affinity": {f"vcpu{t.vcpu.index}": sorted(t.affinity)
                                   for t in self.threads}}
        return out

    def _console_tail(self) -> list[str]:
        if self.console is None:
            return []
        tail = self.console.tail()
        if not tail:
            return ["(the guest printed nothing)"]
        return ["last console lines:"] + [f"  | {line}" for line in tail]

    console: ConsoleSink | None = None


def _open_console(config: VmConfig, stack: Cleanup) -> ConsoleSink:
    if config.console == "stdout":
        fd = sys.stdout.fileno()
    elif config.console == "none":
        fd = None
    else:
        try:
            fd = os.open(config.console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         0o644)
        except OSError as e:
            raise ConfigError(f"--console {config.console}: cannot open it for writing "
                              f"({e.strerror})") from None
        stack.callback(os.close, fd)
    return ConsoleSink(fd, capture=config.console_capture)


def read_kernel(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"kernel {path} does not exist; build the guest kernel with "
                          "`make -C guest-kernel` or give --kernel PATH") from None
    except IsADirectoryError:
        raise ConfigError(f"kernel {path} is a directory; give the kernel image file") from None
    except PermissionError:
        raise ConfigError(f"kernel {path} is not readable: check its permissions") from None
    except OSError as e:
        raise ConfigError(f"kernel {path}: cannot read it ({e.strerror})") from None


class PreparedBoot:
    """Everything checked before a VM exists. `kernel` is a kvmm.boot.loader
    BootImage (ELF or bzImage); `virtio` the (base, size, irq) of each
    virtio-mmio device the guest will have, for the ACPI tables."""
    __slots__ = ("image", "kernel", "cmdline", "ram", "initrd", "virtio")

    def __init__(self, image: bytes, kernel, cmdline: bytes, ram: list, initrd=None,
                 virtio: tuple = ()):
        self.image = image
        self.kernel = kernel
        self.cmdline = cmdline
        self.ram = ram
        self.initrd = initrd
        self.virtio = tuple(virtio)


def _virtio_resources(count: int) -> list[tuple[int, int, int]]:
    """(base, size, irq) of the first `count` virtio-mmio slots."""
    if not count:
        return []
    from kvmm.virtio.attach import slot_resources
    out = []
    for slot in range(count):
        base, irq = slot_resources(slot)
        out.append((base, layout.VIRTIO_MMIO_SIZE, irq))
    return out


def prepare(config: VmConfig) -> PreparedBoot:
    """Check the configuration and the kernel; raise ConfigError/BootError before
    any KVM object is made."""
    config.validate()
    image = read_kernel(config.kernel)
    kernel = loader.parse_kernel(image, name=str(config.kernel))
    ram = layout.ram_regions(config.mem_size)
    low_ram_end = ram[0][0] + ram[0][1]
    kernel.check_fits(low_ram_end)
    virtio = _virtio_resources(len(config.drives) + len(config.nets))
    cmdline = _with_virtio_words(config.cmdline, virtio)
    try:
        encoded = params.encode_cmdline(cmdline, kernel.cmdline_max + 1)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    initrd = None
    if config.initrd is not None:
        initrd = initrd_loader.prepare_initrd(config.initrd, kernel, low_ram_end)
    return PreparedBoot(image, kernel, encoded, ram, initrd, virtio)


def _with_virtio_words(cmdline: str, virtio: list[tuple[int, int, int]]) -> str:
    """The command line plus a `virtio_mmio.device=` word per device, for kernels
    built with VIRTIO_MMIO_CMDLINE_DEVICES (others find them in the DSDT); words
    already there are not repeated."""
    if not virtio:
        return cmdline
    from kvmm.virtio.mmio import cmdline_word
    words = cmdline.split()
    extra = [w for w in (cmdline_word(base, irq, size) for base, size, irq in virtio)
             if w not in words]
    return " ".join([cmdline] + extra) if cmdline else " ".join(extra)


def build(config: VmConfig, prepared: PreparedBoot | None = None, kvm: Kvm | None = None,
          start_time: float | None = None) -> Machine:
    """Create and wire a VM for `config`; the vCPUs do not run until start().
    `start_time` (time.monotonic) is when the boot timer starts counting."""
    prepared = prepared or prepare(config)
    m = Machine(config, start_time)
    stack = m._cleanup
    try:
        _build(m, config, prepared, kvm, stack)
    except BaseException:
        stack.close()
        raise
    return m


def _build(m: Machine, config: VmConfig, prep: PreparedBoot, kvm: Kvm | None,
           stack: Cleanup) -> None:
    if kvm is None:
        kvm = Kvm()
        stack.callback(kvm.close)
        kvm.check_required_caps()
    m.kvm = kvm
    if config.vcpus > kvm.max_vcpus():
        raise ConfigError(f"--vcpus {config.vcpus}: this host's KVM allows at most "
                          f"{kvm.max_vcpus()}")
    m.console = _open_console(config, stack)

    vm = kvm.create_vm()
    stack.callback(vm.close)
    m.vm = vm
    try:
        vm.set_tss_addr(TSS_ADDR)
    except OSError:
        pass  # only VMX needs it
    if config.mem_overhead_limit is not None or config.cpu_quota is not None:
        _enter_cgroup(m, config, stack)     # before guest RAM, so that RAM is charged there
    # Memory slots before the in-kernel irqchip: with the irqchip present each
    # slot change waits for a kernel grace period (~7 ms here).
    mem = GuestMemory(prep.ram, backing=config.mem_backing, prefault=config.mem_prefault,
                      lock=config.mem_lock)
    stack.callback(mem.close)
    m.mem = mem
    mem.register(vm, dirty_log=config.dirty_log)
    vm.create_irqchip()
    vm.create_pit2()

    # Boot structures and the kernel.
    loaded = prep.kernel.load(prep.image, mem)
    for addr, page in paging.build_identity_map(mem.end()):
        mem.write(addr, page)
    mem.write(layout.BOOT_GDT, gdt.gdt_bytes())
    mem.write(layout.MPTABLE, mptable.build_mptable(config.vcpus))
    tables = acpi.build_tables(config.vcpus, prep.virtio)
    for addr, data in tables.pieces:
        mem.write(addr, data)
    mem.write(layout.CMDLINE, prep.cmdline)
    initrd = None
    if prep.initrd is not None:
        initrd_loader.load_initrd(prep.initrd, mem)
        initrd = (prep.initrd.addr, prep.initrd.size)
    zero_page = params.build_zero_page(e820.e820_map(prep.ram), layout.CMDLINE,
                                       len(prep.cmdline) - 1, setup_header=loaded.setup_header,
                                       initrd=initrd, acpi_rsdp=tables.rsdp_addr)
    mem.write(layout.ZERO_PAGE, zero_page)

    # Devices.
    from kvmm.eventloop import EventLoop
    m.loop = EventLoop(f"kvmm-io")
    stack.callback(m.loop.close)
    com1_irq = EventFdTrigger(layout.IRQ_COM1)
    stack.callback(com1_irq.close)
    vm.register_irqfd(com1_irq.fd, com1_irq.gsi)
    m.serial = Serial(com1_irq, m.console)
    m.pio_bus.insert(m.serial, layout.PORT_COM1, REGISTER_COUNT)
    m.pio_bus.insert(I8042(m.guest_reset), layout.PORT_I8042_DATA,
                     layout.PORT_I8042_CMD - layout.PORT_I8042_DATA + 1)
    m.pio_bus.insert(DebugExit(m.guest_exit), layout.PORT_DEBUG_EXIT, 4)
    m.pio_bus.insert(m.boot_timer, layout.PORT_BOOT_TIMER, 1)
    poweroff = AcpiSleep(lambda: m._request_stop(StopReason(   # the FADT's sleep registers
        "exit", 0, "the guest powered off (ACPI S5)")))
    m.pio_bus.insert(poweroff, layout.PORT_ACPI_SLEEP, 1)
    m.bench_sink = Sink()
    m.pio_bus.insert(m.bench_sink, layout.PORT_BENCH, 1)
    m.mmio_bus.insert(m.bench_sink, layout.BENCH_MMIO, layout.BENCH_MMIO_SIZE)
    interactive = config.interactive
    if interactive is None:
        interactive = config.console == "stdout" and os.isatty(0) and os.isatty(1)
    if interactive:
        _attach_stdin(m, stack)
    if config.drives or config.nets:
        from kvmm.quota.guest import GuestQuota
        m.quota = GuestQuota(backoff_ns=config.throttle_backoff_ms * 1_000_000)
    if config.drives:
        from kvmm.virtio.attach import attach_drives
        attach_drives(m, config.drives, stack)
    if config.nets:                    # after the drives: slots as counted in prepare()
        from kvmm.virtio.attach import attach_nets
        attach_nets(m, config.nets, stack)

    if config.drive_group or config.net_group or config.rate_limits:
        _apply_limits(m, config)
    if config.api_sock:
        from kvmm.api.control import ControlServer
        m.control = ControlServer(config.api_sock, m)
        stack.essential(m.control.close)
        m.control.attach(m.loop)

    # vCPUs.
    supported = kvm.supported_cpuid()
    for i in range(config.vcpus):
        vcpu = vm.create_vcpu(i)
        stack.callback(vcpu.close)
        m.vcpus.append(vcpu)
        vcpu.set_cpuid2(setup.vcpu_cpuid(supported, i, config.vcpus, config.cpuid_hide))
        vcpu.set_msrs(setup.boot_msrs())
        _setup_lapic(vcpu)
    bsp = m.vcpus[0]
    m.pvm = _detect_pvm(bsp)
    sregs = bsp.get_sregs()
    setup.boot_sregs(sregs)
    bsp.set_sregs(sregs)
    bsp.set_regs(setup.boot_regs(loaded.entry, layout.ZERO_PAGE))
    fpu = bsp.get_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    bsp.set_fpu(fpu)
    if m.pvm:
        bsp.set_msrs({setup.MSR_PVM_VIF_PAGE: layout.vif_page(0) | setup.PVM_HOST_WRITE_VALID})


def _enter_cgroup(m: Machine, config: VmConfig, stack: Cleanup) -> None:
    from kvmm.quota.cgroup import CgroupError, GuestCgroup
    limit = None
    if config.mem_overhead_limit is not None:
        limit = config.mem_size + config.mem_overhead_limit
    try:
        m.cgroup = GuestCgroup(f"{os.getpid()}", limit, config.cpu_quota)
    except CgroupError as e:
        raise ConfigError(str(e)) from None
    stack.essential(m.cgroup.close)


def _apply_limits(m: Machine, config: VmConfig) -> None:
    """Group limits and --rate-limit settings, checked against the devices."""
    from kvmm.quota.limits import LimitError, spec_from_json, spec_from_shorthand
    quota = m.quota
    if quota is None:
        raise ConfigError("rate limits are given but the guest has no drive or NIC")
    try:
        if config.drive_group:
            quota.set_group("drives", spec_from_shorthand(config.drive_group))
        for direction in ("rx", "tx"):
            if config.net_group:
                quota.set_group(f"nets:{direction}",
                                spec_from_shorthand(config.net_group, f"{direction}_"))
        quota.check_targets(config.rate_limits)
        for target, obj in config.rate_limits.items():
            spec = spec_from_json(obj, f"--rate-limit {target}")
            quota.limiters[target].update(bandwidth=spec.bandwidth, ops=spec.ops)
    except LimitError as e:
        raise ConfigError(str(e)) from None


def _attach_stdin(m: Machine, stack: Cleanup) -> None:
    from kvmm.devices.stdin import StdinForwarder
    fwd = StdinForwarder(0, m.serial, lambda: m.stop(0, "stopped from the console (Ctrl-A x)"))
    if os.isatty(0):
        fwd.raw_mode()
        stack.essential(fwd.restore)
    m.loop.add_reader(0, fwd.on_readable)
    stack.callback(m.loop.remove_reader, 0)


APIC_LVT0 = 0x350
APIC_LVT1 = 0x360
APIC_MODE_EXTINT = 0b111 << 8
APIC_MODE_NMI = 0b100 << 8


def _setup_lapic(vcpu) -> None:
    """LINT0 as ExtINT and LINT1 as NMI, as a BIOS leaves them (Firecracker `interrupts.rs`)."""
    import struct
    from kvmm.ioctl.structs import KvmLapicState
    regs = bytearray(bytes(vcpu.get_lapic()))
    for offset, mode in ((APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)):
        value = struct.unpack_from("<I", regs, offset)[0]
        struct.pack_into("<I", regs, offset, (value & ~0x700) | mode)
    vcpu.set_lapic(KvmLapicState.from_buffer_copy(regs))


def _detect_pvm(vcpu) -> bool:
    """The software-virtualization KVM answers its signature MSR; hardware KVM
    does not know it."""
    try:
        values = vcpu.get_msrs([setup.MSR_PVM_SIGNATURE])
    except OSError:
        return False
    return values.get(setup.MSR_PVM_SIGNATURE) == setup.PVM_SIGNATURE


__all__ = ["Machine", "StopReason", "build", "prepare", "BootError", "ConfigError"]
