"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2).

An `MmioTransport` is a BusDevice: the builder inserts it on the MMIO bus at
`layout.virtio_mmio_base(slot)` with length `layout.VIRTIO_MMIO_SIZE`. It owns
one eventfd per queue; `notifiers()` lists them for KVM_IOEVENTFD so a guest
write to QueueNotify never exits to user space, and `attach(loop)` registers
them with the EventLoop, which then runs the device's queue handler on the
I/O thread. A plain MMIO write to QueueNotify (no ioeventfd bound) signals
the same eventfd. Interrupts go out through the injected IrqTrigger.

Threads: register accesses come from vCPU threads, queue processing from the
I/O thread. `_lock` serializes state changes (status, queue set-up, reset)
against processing; InterruptStatus/ACK and QueueNotify do not take it.
"""
from __future__ import annotations

import functools
import os
import struct
import threading

from kvmm.arch.x86_64.layout import VIRTIO_MMIO_SIZE
from kvmm.virtio.device import (
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VirtioDevice,
    VirtioInterrupt,
)
from kvmm.virtio.errors import QueueError, VirtioError
from kvmm.virtio.queue import Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmm.devices.protocols import IrqTrigger
    from kvmm.eventloop import EventLoop
    from kvmm.memory import GuestMemory

# §4.2.2 MMIO Device Register Layout (offsets from the device's base)
MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
QUEUE_RESET = 0x0C0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

MMIO_MAGIC = 0x74726976        # "virt" little-endian
MMIO_VERSION = 2               # non-legacy interface
VENDOR_KVMM = 0x4D4D564B       # "KVMM" little-endian; §4.2.2 leaves the vendor id free
QUEUE_NOTIFY_WIDTH = 4         # the guest writes QueueNotify as a 32-bit value

_STATUS_DRIVER_BITS = (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
                       | STATUS_DRIVER_OK | STATUS_FAILED)
_WRITE_ONLY = frozenset({DEVICE_FEATURES_SEL, DRIVER_FEATURES, DRIVER_FEATURES_SEL, QUEUE_SEL,
                         QUEUE_NUM, QUEUE_NOTIFY, INTERRUPT_ACK, QUEUE_DESC_LOW,
                         QUEUE_DESC_HIGH, QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH,
                         QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, SHM_SEL})
_QUEUE_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc_table", 0), QUEUE_DESC_HIGH: ("desc_table", 32),
    QUEUE_DRIVER_LOW: ("avail_ring", 0), QUEUE_DRIVER_HIGH: ("avail_ring", 32),
    QUEUE_DEVICE_LOW: ("used_ring", 0), QUEUE_DEVICE_HIGH: ("used_ring", 32),
}
_U32 = struct.Struct("<I")
_MASK32 = 0xFFFF_FFFF


def _size_word(size: int) -> str:
    for shift, suffix in ((30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def cmdline_word(base: int, irq: int, size: int = VIRTIO_MMIO_SIZE,
                 platform_id: int | None = None) -> str:
    """The Linux command-line word that declares one virtio-mmio device:
    `virtio_mmio.device=<size>@<baseaddr>:<irq>[:<id>]`
    (Documentation/admin-guide/kernel-parameters.txt; needs
    CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES in the guest kernel)."""
    if size <= 0 or base < 0 or irq < 0:
        raise ValueError(f"bad virtio-mmio device size {size}, base {base:#x} or irq {irq}")
    word = f"virtio_mmio.device={_size_word(size)}@{base:#x}:{irq}"
    if platform_id is not None:
        word += f":{platform_id}"
    return word


class MmioTransport:
    """A virtio device behind virtio-mmio v2 registers (a BusDevice).

    `interrupt` is the IrqTrigger of the device's line (the builder makes an
    EventFdTrigger and binds it to the GSI with Vm.register_irqfd). `loop`,
    if given, is attached at once (see `attach`).
    """

    def __init__(self, device: VirtioDevice, mem: GuestMemory, interrupt: IrqTrigger, *,
                 loop: EventLoop | None = None, name: str | None = None):
        if not device.avail_features >> VIRTIO_F_VERSION_1 & 1:
            raise VirtioError(f"{device.name}: a virtio-mmio v2 device must offer "
                              "VIRTIO_F_VERSION_1")
        self.device = device
        self.mem = mem
        self.name = name or device.name
        self.interrupt = VirtioInterrupt(interrupt)
        self.queues = [Queue(m) for m in device.queue_max_sizes]
        self._notify_fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                            for _ in self.queues]
        self._lock = threading.Lock()
        self._loop = None
        self._timers: list[tuple[float, int]] = []   # retries waiting, when there is no loop
        self.log = device.log          # one rate limit per device, shared with it
        if name:
            self.log.prefix = name
        self.counters = {"queue_errors": 0, "bad_accesses": 0, "notifications": 0,
                         "resets": 0, "activations": 0}
        self.config_generation = 0
        self._reset_state()
        device.set_retry_hook(self._retry_later)
        if loop is not None:
            self.attach(loop)

    def _reset_state(self) -> None:
        self.status = 0
        self.needs_reset = False
        self.activated = False
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self._bad_feature_word = False
        self.queue_sel = 0
        for q in self.queues:
            q.reset()
        self.interrupt.clear()

    # Wiring. ---------------------------------------------------------------
    def notifiers(self) -> list[tuple[int, int, int]]:
        """(register offset, datamatch, eventfd) per queue, for KVM_IOEVENTFD:
        bind each at base + offset, length QUEUE_NOTIFY_WIDTH (4), datamatch =
        queue index."""
        return [(QUEUE_NOTIFY, i, fd) for i, fd in enumerate(self._notify_fds)]

    def attach(self, loop: EventLoop) -> None:
        """Run queue handlers on `loop` (a kvmm.eventloop.EventLoop) when the
        queue eventfds fire."""
        self._loop = loop
        for i, fd in enumerate(self._notify_fds):
            loop.add_reader(fd, functools.partial(self._on_notify, i))

    def close(self) -> None:
        with self._lock:
            if self.activated:
                self.device.reset()
                self.activated = False
        for fd in self._notify_fds:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            os.close(fd)
        self._notify_fds = []
        self._loop = None

    def config_changed(self) -> None:
        """The device changed its configuration space (e.g. a resized disk)."""
        self.config_generation = (self.config_generation + 1) & _MASK32
        if self.status & STATUS_DRIVER_OK:
            self.interrupt.signal_config()

    # BusDevice. ------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        if offset >= CONFIG:
            self.device.read_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset & 3:
            self._bad_access("read", offset, len(data))
            return
        _U32.pack_into(data, 0, self._read_register(offset) & _MASK32)

    def write(self, offset: int, data: bytes) -> None:
        if offset >= CONFIG:
            with self._lock:
                self.device.write_config(offset - CONFIG, bytes(data))
            return
        if len(data) != 4 or offset & 3:
            self._bad_access("write", offset, len(data))
            return
        value = _U32.unpack_from(data)[0]
        if offset == QUEUE_NOTIFY:
            self.notify(value)
        elif offset == INTERRUPT_ACK:
            self.interrupt.ack(value)
        else:
            with self._lock:
                self._write_register(offset, value)

    def _bad_access(self, kind: str, offset: int, size: int) -> None:
        self._ignored("%d-byte %s at register offset %#x (registers are 32-bit and "
                      "aligned; holes and read-only registers ignore writes)", size, kind, offset)

    def _ignored(self, msg: str, *args) -> None:
        self.counters["bad_accesses"] += 1
        self.log.warning("ignored " + msg, *args)

    def _read_register(self, offset: int) -> int:
        if offset == INTERRUPT_STATUS:
            return self.interrupt.status
        if offset == MAGIC_VALUE:
            return MMIO_MAGIC
        if offset == VERSION:
            return MMIO_VERSION
        if offset == DEVICE_ID:
            return self.device.device_id
        if offset == VENDOR_ID:
            return VENDOR_KVMM
        if offset == DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return self.device.avail_features >> (32 * self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            q = self._selected_queue()
            return q.max_size if q is not None else 0
        if offset == QUEUE_READY:
            q = self._selected_queue()
            return int(q is not None and q.ready)
        if offset == STATUS:
            return self.status | (STATUS_DEVICE_NEEDS_RESET if self.needs_reset else 0)
        if offset == CONFIG_GENERATION:
            return self.config_generation
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
            return _MASK32            # no shared memory regions: length and base are -1
        if offset == QUEUE_RESET:
            return 0                  # VIRTIO_F_RING_RESET is not offered
        if offset in _WRITE_ONLY:
            return 0                  # the driver must not read these (§4.2.2.2)
        self._bad_access("read", offset, 4)
        return 0

    def _selected_queue(self) -> Queue | None:
        if self.queue_sel < len(self.queues):
            return self.queues[self.queue_sel]
        return None

    def _write_register(self, offset: int, value: int) -> None:
        if offset == STATUS:
            self._write_status(value)
        elif offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == QUEUE_NUM:
            q = self._configurable_queue("QueueNum")
            if q is not None:
                q.size = value
        elif offset in _QUEUE_ADDR_REGS:
            q = self._configurable_queue("queue address")
            if q is not None:
                attr, shift = _QUEUE_ADDR_REGS[offset]
                old = getattr(q, attr)
                setattr(q, attr, (old & ~(_MASK32 << shift)) | (value << shift))
        elif offset == QUEUE_READY:
            self._write_queue_ready(value)
        elif offset in (SHM_SEL, QUEUE_RESET):
            pass
        else:
            # Read-only registers and holes: writes are ignored (§4.2.2.2).
            self._bad_access("write", offset, 4)

    def _write_driver_features(self, value: int) -> None:
        if self.status & (STATUS_FEATURES_OK | STATUS_FAILED) or not self.status & STATUS_DRIVER:
            self._ignored("DriverFeatures write outside feature negotiation (status %#x)",
                          self.status)
            return
        sel = self.driver_features_sel
        if sel > 1:
            # Only words 0 and 1 exist; a bit beyond them is an unknown feature.
            if value:
                self._bad_feature_word = True
            return
        shift = 32 * sel
        self.driver_features = (self.driver_features & ~(_MASK32 << shift)) | (value << shift)

    def _configurable_queue(self, what: str) -> Queue | None:
        """The selected queue, if the driver may configure it now (§3.1.1 step 7:
        after FEATURES_OK, before DRIVER_OK, while QueueReady is 0)."""
        q = self._selected_queue()
        if (q is None or q.ready or self.status & (STATUS_DRIVER_OK | STATUS_FAILED)
                or not self.status & STATUS_FEATURES_OK):
            self._ignored("%s write for queue %d (status %#x)", what, self.queue_sel,
                          self.status)
            return None
        return q

    def _write_queue_ready(self, value: int) -> None:
        q = self._selected_queue()
        if q is None:
            self._ignored("QueueReady write for missing queue %d", self.queue_sel)
            return
        if not value & 1:
            q.ready = False       # stop using the queue (the driver reads it back)
            return
        if q.ready:
            return
        if self._configurable_queue("QueueReady") is None:
            return
        try:
            q.validate(self.mem)
        except QueueError as e:
            self._fail(f"queue {self.queue_sel} set ready with a bad configuration: {e.reason}")
            return
        q.ready = True

    # Status state machine (§2.1, §3.1.1). -----------------------------------
    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        old = self.status
        value &= _STATUS_DRIVER_BITS
        if old & ~value:
            self.log.warning("ignored status write %#x: it clears bits of %#x "
                             "(write 0 to reset)", value, old)
            return
        add = value & ~old
        if add & STATUS_DRIVER and not value & STATUS_ACKNOWLEDGE:
            add &= ~STATUS_DRIVER
        if add & STATUS_FEATURES_OK:
            reason = self._features_refused() if value & STATUS_DRIVER else "DRIVER not set"
            if reason:
                self.log.warning("FEATURES_OK refused: %s", reason)
                add &= ~STATUS_FEATURES_OK
            else:
                self.device.acked_features = self.driver_features
        if add & STATUS_DRIVER_OK and not old & STATUS_FEATURES_OK:
            self.log.warning("ignored DRIVER_OK before FEATURES_OK")
            add &= ~STATUS_DRIVER_OK
        self.status = old | add
        if add & STATUS_DRIVER_OK and not self.status & STATUS_FAILED:
            self._activate()

    def _features_refused(self) -> str | None:
        offered = self.device.avail_features
        wanted = self.driver_features
        if self._bad_feature_word or wanted & ~offered:
            extra = wanted & ~offered
            return f"driver asked for features the device does not offer ({extra:#x})"
        if not wanted >> VIRTIO_F_VERSION_1 & 1:
            return "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)"
        return None

    def _activate(self) -> None:
        if self.needs_reset:
            return
        required = self.device.queues_required()
        try:
            for i, q in enumerate(self.queues):
                if q.ready:
                    q.activate(self.mem, self.driver_features)
                elif i < required:
                    raise QueueError(f"DRIVER_OK while queue {i} is not ready")
            self.device.activate(self.queues, self.mem, self.interrupt)
        except (VirtioError, OSError) as e:
            self._fail(f"activation failed: {e}")
            return
        self.activated = True
        self.counters["activations"] += 1
        # Chains made available before DRIVER_OK, if any, are looked at now.
        for i in range(len(self.queues)):
            self.notify(i)

    def _reset(self) -> None:
        if self.activated:
            self.device.reset()
        self.counters["resets"] += 1
        self._reset_state()

    def _fail(self, reason: str, exc_info=None) -> None:
        """The guest broke the device: DEVICE_NEEDS_RESET, config interrupt, log."""
        self.counters["queue_errors"] += 1
        self.log.warning("%s; device needs reset", reason, exc_info=exc_info)
        if self.needs_reset:
            return
        self.needs_reset = True
        if self.status & STATUS_DRIVER_OK:
            # §2.1.2: NEEDS_RESET with DRIVER_OK set sends a config change notification.
            self.interrupt.signal_config()

    # Notifications and processing. ---------------------------------------------
    def notify(self, index: int) -> None:
        """What a QueueNotify write does: signal the queue's eventfd."""
        if not 0 <= index < len(self._notify_fds):
            self._ignored("QueueNotify for missing queue %d", index)
            return
        try:
            os.eventfd_write(self._notify_fds[index], 1)
        except BlockingIOError:
            pass          # counter saturated: a notification is already pending

    def _on_notify(self, index: int) -> None:
        try:
            os.eventfd_read(self._notify_fds[index])
        except (OSError, IndexError):     # nothing pending, or closed meanwhile
            return
        self.process(index)

    def process(self, index: int) -> None:
        """Run the device's handler for queue `index` (I/O thread)."""
        with self._lock:
            if not self.activated or self.needs_reset:
                return
            q = self.queues[index]
            if not q.ready:
                return
            self.counters["notifications"] += 1
            try:
                self.device.process_queue(index)
            except QueueError as e:
                self._fail(f"queue {index}: {e.reason}")
            except Exception as e:  # a device bug must not stop the other devices
                self._fail(f"queue {index}: internal error {e!r}", exc_info=True)

    def run_pending(self) -> int:
        """Without an EventLoop (unit tests): handle every signalled queue
        eventfd once, as the loop would. Returns how many fired."""
        fired = 0
        for i, fd in enumerate(self._notify_fds):
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                continue
            fired += 1
            self.process(i)
        return fired

    def _retry_later(self, delay: float, index: int) -> None:
        loop = self._loop
        if loop is not None:
            callback = functools.partial(self.process, index)
            if delay <= 0:
                loop.call_soon(callback)
            else:
                loop.call_later(delay, callback)
        else:
            self._timers.append((delay, index))

    def run_timers(self) -> int:
        """Without an EventLoop (unit tests): fire every retry the device asked for."""
        timers, self._timers = self._timers, []
        for _delay, index in timers:
            self.process(index)
        return len(timers)

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.device.stats()}
