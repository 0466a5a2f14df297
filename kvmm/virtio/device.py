"""What a virtio device implements, and what a transport gives it.

A device (virtio-blk, later virtio-net) is a `VirtioDevice`: an id, the
feature bits it offers, a configuration space, the maximum size of each of
its queues, and four calls the transport makes: `activate`, `reset`,
`process_queue` (on the I/O thread, once per notification) and, through the
defaults here, `read_config` / `write_config`. It never sees registers,
eventfds or guest addresses of its own: the transport hands it checked
`Queue`s, the GuestMemory and a `VirtioInterrupt`.
"""
from __future__ import annotations

import threading
import time

from kvmm.virtio.queue import Queue, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC

TYPE_CHECKING = False
if TYPE_CHECKING:            # typing and logging stay off the boot path
    from collections.abc import Callable

    from kvmm.devices.protocols import IrqTrigger
    from kvmm.memory import GuestMemory

# §5 Device Types: device ids
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2

# §2.1 Device Status Field
STATUS_ACKNOWLEDGE = 0b0000_0001
STATUS_DRIVER = 0b0000_0010
STATUS_DRIVER_OK = 0b0000_0100
STATUS_FEATURES_OK = 0b0000_1000
STATUS_DEVICE_NEEDS_RESET = 0b0100_0000
STATUS_FAILED = 0b1000_0000

# §6 Reserved Feature Bits (bit numbers), ring bits re-exported from queue.py
VIRTIO_F_INDIRECT_DESC = VIRTIO_RING_F_INDIRECT_DESC      # 28
VIRTIO_F_EVENT_IDX = VIRTIO_RING_F_EVENT_IDX              # 29
VIRTIO_F_VERSION_1 = 32

# §4.2.2 InterruptStatus bits
INTERRUPT_USED_BUFFER = 0b01
INTERRUPT_CONFIG_CHANGE = 0b10


def bit(n: int) -> int:
    return 1 << n


class VirtioInterrupt:
    """The device's interrupt: an InterruptStatus word and the injected trigger
    (an irqfd in production, a CountingTrigger in unit tests)."""

    def __init__(self, trigger: IrqTrigger):
        self.trigger_obj = trigger
        self.status = 0
        self._lock = threading.Lock()

    def signal_used(self) -> None:
        """Used Buffer Notification (InterruptStatus bit 0)."""
        with self._lock:
            self.status |= INTERRUPT_USED_BUFFER
        self.trigger_obj.trigger()

    def signal_config(self) -> None:
        """Configuration Change Notification (InterruptStatus bit 1)."""
        with self._lock:
            self.status |= INTERRUPT_CONFIG_CHANGE
        self.trigger_obj.trigger()

    def ack(self, bits: int) -> None:
        with self._lock:
            self.status &= ~bits

    def clear(self) -> None:
        with self._lock:
            self.status = 0


LOGGER_NAME = "kvmm.virtio"
WARNING = 30      # logging.WARNING
ERROR = 40        # logging.ERROR


class RateLimitedLog:
    """A logger that writes at most `per_second` lines a second, then says how
    many it held back (a guest must not be able to flood the host's log).
    `logging` is imported on the first line written, not before."""

    def __init__(self, logger_name: str, prefix: str, per_second: int = 5):
        self.logger_name = logger_name
        self.logger = None
        self.prefix = prefix
        self.per_second = per_second
        self._window = 0.0
        self._count = 0
        self.suppressed = 0
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args, exc_info=None) -> bool:
        now = time.monotonic()
        if self.logger is None:
            import logging
            self.logger = logging.getLogger(self.logger_name)
        with self._lock:
            if now - self._window >= 1.0:
                held, self.suppressed = self.suppressed, 0
                self._window = now
                self._count = 0
                if held:
                    self._count += 1
                    self.logger.log(level, "%s: %d similar messages suppressed",
                                    self.prefix, held)
            if self._count >= self.per_second:
                self.suppressed += 1
                return False
            self._count += 1
        self.logger.log(level, "%s: " + msg, self.prefix, *args, exc_info=exc_info)
        return True

    def warning(self, msg: str, *args, exc_info=None) -> bool:
        return self.log(WARNING, msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args, exc_info=None) -> bool:
        return self.log(ERROR, msg, *args, exc_info=exc_info)


class VirtioDevice:
    """Base class of virtio devices.

    Subclasses set `device_id`, `name`, `avail_features` (must include
    VIRTIO_F_VERSION_1), `queue_max_sizes` and `config` (the configuration
    space bytes, little-endian), and implement `activate`, `reset` and
    `process_queue`. The transport sets `acked_features` before `activate`.
    `log` is the device's one rate-limited log, shared with its transport, so
    a guest gets at most `log_per_second` lines a second out of a device.
    """

    device_id: int = 0
    name: str = "virtio"
    avail_features: int = bit(VIRTIO_F_VERSION_1)
    queue_max_sizes: tuple[int, ...] = ()
    config: bytes = b""

    def __init__(self, log_per_second: int = 5) -> None:
        self.acked_features = 0
        self.log = RateLimitedLog(LOGGER_NAME, self.name, log_per_second)
        self._retry_hook: Callable[[float, int], None] | None = None

    # Configuration space (§2.5); offsets are from the start of the space. ----
    def read_config(self, offset: int, data: memoryview) -> None:
        """Fill `data` (pre-zeroed); bytes past the end of the space read as 0."""
        config = self.config
        if 0 <= offset < len(config):
            n = min(len(data), len(config) - offset)
            data[:n] = config[offset:offset + n]

    def write_config(self, offset: int, data: bytes) -> None:
        """Ignored unless the device has writable configuration fields."""

    def queues_required(self) -> int:
        """How many queues (from 0) must be ready at DRIVER_OK, given acked_features."""
        return len(self.queue_max_sizes)

    # Life cycle. --------------------------------------------------------------
    def activate(self, queues: list[Queue], mem: GuestMemory,
                 interrupt: VirtioInterrupt) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def process_queue(self, index: int) -> None:
        """Handle everything available on queue `index` (on the I/O thread).

        May raise QueueError; the transport then marks the device NEEDS_RESET.
        """
        raise NotImplementedError

    # Hooks the transport fills in. ---------------------------------------------
    def set_retry_hook(self, hook: Callable[[float, int], None] | None) -> None:
        """`hook(delay, queue_index)` runs process_queue(queue_index) again after
        `delay` seconds on the I/O thread (used by throttled devices)."""
        self._retry_hook = hook

    def retry_later(self, delay: float, queue_index: int) -> bool:
        if self._retry_hook is None:
            return False
        self._retry_hook(delay, queue_index)
        return True

    def stats(self) -> dict[str, int]:
        return {}
