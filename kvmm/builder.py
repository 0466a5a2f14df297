"""The builder: a checked VmSpec to a VM ready to run.

`prepare(spec)` opens and checks every host resource first (the kernel, the
initrd, the console file, each drive's image and each NIC's TAP) and gives
every device its virtio-mmio slot, interrupt and ACPI entry, in one place;
nothing of KVM exists yet, so a bad image or TAP costs no guest RAM.
`build(spec, prepared, loop)` then makes the VM: memory, the kernel, the boot
tables, the legacy devices, one virtio device per device spec, the vCPUs.

A device type is a spec class (kvmm/spec/) and a device module: the spec's
`device_module` names the module, which provides `open_backends(specs)` (the
host side of those specs: images, TAPs...; all or none) and
`make_device(machine, backend, quota) -> (device, after_attach or None)`.
"""
from __future__ import annotations

import os
import sys

from kvmm.arch.x86_64 import acpi, e820, gdt, layout, mptable, paging
from kvmm.boot import initrd as initrd_loader, loader, params
from kvmm.boot.errors import BootError
from kvmm.cleanup import Cleanup
from kvmm.devices.acpi_sleep import AcpiSleep
from kvmm.devices.irq import EventFdTrigger
from kvmm.devices.legacy import I8042, BootTimer, DebugExit, Sink
from kvmm.devices.serial import REGISTER_COUNT, ConsoleSink, Serial
from kvmm.ioctl import Kvm
from kvmm.machine import TSS_ADDR, Machine, StopReason
from kvmm.memory import GuestMemory
from kvmm.spec import SpecError, VmSpec
from kvmm.vcpu import setup


class DeviceSlot:
    """A device spec with what the builder gave it: its virtio-mmio slot, MMIO
    base and GSI, and its opened host side (an image, a TAP)."""
    __slots__ = ("spec", "slot", "base", "gsi", "backend")

    def __init__(self, spec, slot: int, base: int, gsi: int):
        self.spec = spec
        self.slot = slot
        self.base = base
        self.gsi = gsi
        self.backend = None

    @property
    def size(self) -> int:
        return layout.VIRTIO_MMIO_SIZE


class Prepared:
    """Everything checked and opened before a VM exists. `kernel` is a
    kvmm.boot.loader BootImage (ELF or bzImage); `devices` the DeviceSlots
    in slot order, backends open. `close()` releases what is open (the
    builder takes them over on success)."""

    def __init__(self):
        self.image = b""
        self.kernel = None
        self.cmdline = b""
        self.ram: list = []
        self.initrd = None
        self.devices: list[DeviceSlot] = []
        self.console_fd: int | None = None
        self.cleanup = Cleanup()

    @property
    def virtio(self) -> tuple:
        """(base, size, irq) of each virtio-mmio device, for the ACPI tables."""
        return tuple((d.base, d.size, d.gsi) for d in self.devices)

    def close(self) -> None:
        self.cleanup.close()


def device_module(spec):
    """The module that opens and makes the device of a device spec."""
    return __import__(spec.device_module, fromlist=["make_device"])


def read_kernel(path: str) -> bytes:
    label = f"kernel {path}"
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SpecError(label, "does not exist; build the guest kernel with "
                               "`make -C guest-kernel` or give the path of a kernel") from None
    except IsADirectoryError:
        raise SpecError(label, "is a directory; give the kernel image file") from None
    except PermissionError:
        raise SpecError(label, "is not readable: check its permissions") from None
    except OSError as e:
        raise SpecError(label, f"cannot read it ({e.strerror})") from None


def assign_slots(specs: list) -> list[DeviceSlot]:
    """Slot, MMIO base and GSI of each device spec, in order: the one place
    they are decided."""
    out = []
    for slot, spec in enumerate(specs):
        gsi = layout.VIRTIO_IRQ_BASE + slot
        if gsi > layout.VIRTIO_IRQ_MAX:
            raise SpecError("devices", f"too many virtio devices: {len(specs)} need IRQs up to "
                                       f"{layout.VIRTIO_IRQ_BASE + len(specs) - 1}, past the "
                                       f"last IOAPIC pin {layout.VIRTIO_IRQ_MAX}")
        out.append(DeviceSlot(spec, slot, layout.virtio_mmio_base(slot), gsi))
    return out


def _with_virtio_words(cmdline: str, devices: list[DeviceSlot]) -> str:
    """The command line plus a `virtio_mmio.device=` word per device, for kernels
    built with VIRTIO_MMIO_CMDLINE_DEVICES (others find them in the DSDT); words
    already there are not repeated."""
    if not devices:
        return cmdline
    from kvmm.virtio.mmio import cmdline_word
    words = cmdline.split()
    extra = [w for w in (cmdline_word(d.base, d.gsi, d.size) for d in devices)
             if w not in words]
    return " ".join([cmdline] + extra) if cmdline else " ".join(extra)


def _open_console(console: str, label: str) -> int | None:
    if console == "stdout":
        return sys.stdout.fileno()
    if console == "none":
        return None
    try:
        return os.open(console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise SpecError(f"{label} {console}", f"cannot open it for writing ({e.strerror})") \
            from None


def prepare(spec: VmSpec) -> Prepared:
    """Check `spec` and open every host resource; raise SpecError, BootError or
    a device's ValueError (DriveError, NetError) before any KVM object exists."""
    spec.validate(booting=True)
    p = Prepared()
    try:
        _prepare(spec, p)
    except BaseException:
        p.close()
        raise
    return p


def _prepare(spec: VmSpec, p: Prepared) -> None:
    boot = spec.boot_source
    p.image = read_kernel(boot.kernel_image_path)
    p.kernel = loader.parse_kernel(p.image, name=str(boot.kernel_image_path))
    p.ram = layout.ram_regions(spec.machine.mem_size)
    low_ram_end = p.ram[0][0] + p.ram[0][1]
    p.kernel.check_fits(low_ram_end)
    p.devices = assign_slots(spec.devices())
    cmdline = _with_virtio_words(spec.boot_args(), p.devices)
    try:
        p.cmdline = params.encode_cmdline(cmdline, p.kernel.cmdline_max + 1)
    except ValueError as e:
        raise SpecError(spec.label("boot_args", "boot-source.boot_args"), str(e)) from None
    if boot.initrd_path is not None:
        p.initrd = initrd_loader.prepare_initrd(boot.initrd_path, p.kernel, low_ram_end)
    # Host resources, every kind all or none, in slot order.
    by_kind: dict[str, list[DeviceSlot]] = {}
    for d in p.devices:
        by_kind.setdefault(d.spec.kind, []).append(d)
    for kind, slots in by_kind.items():
        backends = device_module(slots[0].spec).open_backends([d.spec for d in slots])
        for d, backend in zip(slots, backends):
            d.backend = backend
            p.cleanup.callback(backend.close)
    p.console_fd = _open_console(spec.host.console, spec.label("console", "kvmm.console"))
    if p.console_fd is not None and spec.host.console != "stdout":
        p.cleanup.callback(os.close, p.console_fd)


def build(spec: VmSpec, prepared: Prepared, loop, kvm: Kvm | None = None,
          start_time: float | None = None, console_capture: bool = False,
          interactive: bool = False, vcpu_name: str = "kvmm-vcpu{}",
          console_observer=None, build_start: float | None = None) -> Machine:
    """Create and wire a VM for `spec` from `prepared` (whose resources it takes
    over); the vCPUs do not run until Machine.start(). `loop` is the monitor's
    kvmm.eventloop.EventLoop, which the devices join."""
    m = Machine(spec, start_time, vcpu_name=vcpu_name)
    m.build_started = build_start
    m.loop = loop
    stack = m._cleanup
    stack.callback(prepared.close)
    try:
        _build(m, spec, prepared, kvm, stack, console_capture, interactive)
        m.console.observer = console_observer
    except BaseException:
        stack.close()
        raise
    return m


def _build(m: Machine, spec: VmSpec, prep: Prepared, kvm: Kvm | None, stack: Cleanup,
           console_capture: bool, interactive: bool) -> None:
    machine, host = spec.machine, spec.host
    if kvm is None:
        kvm = Kvm()
        stack.callback(kvm.close)
        kvm.check_required_caps()
    m.kvm = kvm
    if machine.vcpu_count > kvm.max_vcpus():
        raise SpecError("machine-config.vcpu_count", f"{machine.vcpu_count}: this host's KVM "
                                                     f"allows at most {kvm.max_vcpus()}")
    m.console = ConsoleSink(prep.console_fd, capture=console_capture)
    vm = kvm.create_vm()
    stack.callback(vm.close)
    m.vm = vm
    try:
        vm.set_tss_addr(TSS_ADDR)
    except OSError:
        pass  # only VMX needs it
    if host.mem_overhead_limit_mib is not None or host.cpu_quota is not None:
        _enter_cgroup(m, spec, stack)     # before guest RAM, so that RAM is charged there
    # Memory slots before the in-kernel irqchip: with the irqchip present each
    # slot change waits for a kernel grace period (~7 ms here).
    mem = GuestMemory(prep.ram, backing=host.mem_backing, prefault=host.mem_prefault,
                      lock=host.mem_lock)
    stack.callback(mem.close)
    m.mem = mem
    mem.register(vm, dirty_log=machine.track_dirty_pages)
    vm.create_irqchip()
    vm.create_pit2()
    entry = _load_boot_image(m, spec, prep)
    _add_legacy_devices(m, stack, interactive)
    _add_virtio_devices(m, spec, prep, stack)
    _create_vcpus(m, spec, kvm, entry, stack)


def _load_boot_image(m: Machine, spec: VmSpec, prep: Prepared) -> int:
    """The kernel, page tables, GDT, MP and ACPI tables, command line, initrd
    and zero page into guest memory; returns the entry point."""
    mem, vcpus = m.mem, spec.machine.vcpu_count
    loaded = prep.kernel.load(prep.image, mem)
    for addr, page in paging.build_identity_map(mem.end()):
        mem.write(addr, page)
    mem.write(layout.BOOT_GDT, gdt.gdt_bytes())
    mem.write(layout.MPTABLE, mptable.build_mptable(vcpus))
    tables = acpi.build_tables(vcpus, prep.virtio)
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
    return loaded.entry


def _add_legacy_devices(m: Machine, stack: Cleanup, interactive: bool) -> None:
    com1_irq = EventFdTrigger(layout.IRQ_COM1)
    stack.callback(com1_irq.close)
    m.vm.register_irqfd(com1_irq.fd, com1_irq.gsi)
    m.serial = Serial(com1_irq, m.console)
    m.pio_bus.insert(m.serial, layout.PORT_COM1, REGISTER_COUNT)
    kbd_irq = EventFdTrigger(layout.IRQ_I8042_KBD)
    stack.callback(kbd_irq.close)
    m.vm.register_irqfd(kbd_irq.fd, kbd_irq.gsi)
    m.i8042 = I8042(m.guest_reset, kbd_irq)
    m.pio_bus.insert(m.i8042, layout.PORT_I8042_DATA,
                     layout.PORT_I8042_CMD - layout.PORT_I8042_DATA + 1)
    m.pio_bus.insert(DebugExit(m.guest_exit), layout.PORT_DEBUG_EXIT, 4)
    m.boot_timer = BootTimer(m.created, m.log_ready)
    m.pio_bus.insert(m.boot_timer, layout.PORT_BOOT_TIMER, 1)
    poweroff = AcpiSleep(lambda: m.request_stop(StopReason(   # the FADT's sleep registers
        "exit", 0, "the guest powered off (ACPI S5)")))
    m.pio_bus.insert(poweroff, layout.PORT_ACPI_SLEEP, 1)
    m.bench_sink = Sink()
    m.pio_bus.insert(m.bench_sink, layout.PORT_BENCH, 1)
    m.mmio_bus.insert(m.bench_sink, layout.BENCH_MMIO, layout.BENCH_MMIO_SIZE)
    if interactive:
        from kvmm.devices.stdin import StdinForwarder
        fwd = StdinForwarder(0, m.serial, lambda: m.stop(0, "stopped from the console "
                                                            "(Ctrl-A x)"))
        if os.isatty(0):
            fwd.raw_mode()
            stack.essential(fwd.restore)
        m.loop.add_reader(0, fwd.on_readable)
        stack.callback(m.loop.remove_reader, 0)


def _add_virtio_devices(m: Machine, spec: VmSpec, prep: Prepared, stack: Cleanup) -> None:
    """One virtio-mmio device per DeviceSlot: an irqfd for its GSI, the device
    behind an MmioTransport on the event loop, the transport on the MMIO bus,
    and an ioeventfd per queue (QueueNotify never exits to user space)."""
    if not prep.devices:
        return
    from kvmm.quota.guest import GuestQuota
    from kvmm.virtio.mmio import QUEUE_NOTIFY_WIDTH, MmioTransport
    m.quota = quota = GuestQuota(backoff_ns=spec.host.throttle_backoff_ms * 1_000_000)
    for target, limit in spec.group_limits().items():
        quota.set_group(target, limit)
    vm = m.vm
    for d in prep.devices:
        device, after_attach = device_module(d.spec).make_device(m, d.backend, quota)
        irq = EventFdTrigger(d.gsi)
        stack.callback(irq.close)
        vm.register_irqfd(irq.fd, d.gsi)     # KVM keeps its own reference: closing is safe
        transport = MmioTransport(device, m.mem, irq, loop=m.loop,
                                  name=f"{d.spec.kind}:{d.spec.id}")
        stack.callback(transport.close)
        m.mmio_bus.insert(transport, d.base, d.size)
        for offset, datamatch, fd in transport.notifiers():
            vm.register_ioeventfd(fd, d.base + offset, QUEUE_NOTIFY_WIDTH, datamatch)
        if after_attach is not None:
            after_attach(transport)
        m.virtio_devices.append(transport)


def _create_vcpus(m: Machine, spec: VmSpec, kvm: Kvm, entry: int, stack: Cleanup) -> None:
    count = spec.machine.vcpu_count
    hide = frozenset(spec.host.hide_cpuid)
    supported = kvm.supported_cpuid()
    for i in range(count):
        vcpu = m.vm.create_vcpu(i)
        stack.callback(vcpu.close)
        m.vcpus.append(vcpu)
        vcpu.set_cpuid2(setup.vcpu_cpuid(supported, i, count, hide, spec.machine.smt))
        vcpu.set_msrs(setup.boot_msrs())
        setup.setup_lapic(vcpu)
    bsp = m.vcpus[0]
    m.pvm = setup.detect_pvm(bsp)
    sregs = bsp.get_sregs()
    setup.boot_sregs(sregs)
    bsp.set_sregs(sregs)
    bsp.set_regs(setup.boot_regs(entry, layout.ZERO_PAGE))
    fpu = bsp.get_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    bsp.set_fpu(fpu)
    if m.pvm:
        bsp.set_msrs({setup.MSR_PVM_VIF_PAGE: layout.vif_page(0) | setup.PVM_HOST_WRITE_VALID})


def _enter_cgroup(m: Machine, spec: VmSpec, stack: Cleanup) -> None:
    from kvmm.quota.cgroup import CgroupError, GuestCgroup
    limit = None
    if spec.host.mem_overhead_limit_mib is not None:
        limit = spec.machine.mem_size + (spec.host.mem_overhead_limit_mib << 20)
    try:
        m.cgroup = GuestCgroup(f"{os.getpid()}", limit, spec.host.cpu_quota)
    except CgroupError as e:
        raise SpecError("cgroup", str(e)) from None
    stack.essential(m.cgroup.close)


__all__ = ["DeviceSlot", "device_module", "Prepared", "assign_slots", "build", "prepare",
           "read_kernel", "BootError"]
