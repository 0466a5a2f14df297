"""virtio-net (virtio 1.2 §5.1) on a TAP interface.

Queues: 0 receive, 1 transmit (one pair, no control queue). Every buffer
starts with the 12-byte struct virtio_net_hdr, num_buffers included
(VERSION_1, §5.1.6.1); the TAP was opened with IFF_VNET_HDR and a header
size of 12, so the header passes between guest and kernel as it is.

Transmit (queue 1 notification, on the I/O thread): each chain is checked
(device-readable only, room for header and Ethernet header, at most one
frame's size); the header is copied out of guest memory, checked against the
negotiated offloads and handed to os.writev with memoryviews of the rest of
the chain: the frame goes from guest RAM to the kernel without a copy in
between. At most `tx_budget` frames per wake-up; then the queue is processed
again from the event loop (`retry_later(0)`: EventLoop.call_soon), after
anything else that is ready, so a guest flooding its transmit queue cannot
starve other devices or the console (the EventLoop runs those call-backs
after the descriptors its last poll found ready, and polls again right after
them, so at most two budgets pass between two polls). Used buffers are published, and
the driver interrupted if it asked to be (EVENT_IDX's used_event), after each
budget: a driver waiting for room refills the ring while the device goes on.

Receive: os.readv from the TAP straight into the guest's posted buffers
(memoryviews of guest RAM), plus one device-owned overflow buffer at the end
that catches a frame too large for the buffers (it is then dropped and
counted, never delivered cut short). With VIRTIO_NET_F_MRG_RXBUF a frame may
fill several chains (`num_buffers` in the header says how many); chains taken
from the ring and not yet filled are kept for the next frame. The TAP fd is
watched by the EventLoop only while the guest has room for a full frame: when
it has none, the device stops reading, frames wait in the kernel's TAP queue
(bounded by the TAP's txqueuelen; the kernel counts what it drops there,
`stats()["tap_dropped"]`), receive notifications are enabled, and the guest's
next receive-queue notification resumes reading. Nothing is dropped silently.

Rate limiting: a hook like virtio-blk's, one limiter per direction,
`limiter.admit_bytes(nbytes) -> seconds` (kvmm.quota.limits.RequestAdmission,
made by kvmm.quota.guest.GuestQuota.nic; a frame costs one op and its Ethernet
length, virtio header excluded). While `limiter.limits()` is false (no
bucket applies, only counting), a pass admits its frames without asking and
reports them with `limiter.count(frames, nbytes)`. A refused transmit frame stays
in the available ring; a refused received frame stays, unpublished, in the
buffers it was read into while the rest wait in the TAP; the queue is
processed again once the limiter allows (VirtioDevice.retry_later).

Threads: activate/reset come from a vCPU thread and process_queue from the
I/O thread, all under the transport's lock. The TAP reader callback takes no
lock: it only has the transport run process_queue(0) (`set_rx_handler`, or
the retry hook), which takes the lock and marks the device
DEVICE_NEEDS_RESET if the guest broke a queue.
"""
from __future__ import annotations

import os
import struct
import time

from kvmm.virtio.device import (
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_NET,
    VirtioDevice, VirtioInterrupt, bit,
)
from kvmm.virtio.net.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN
from kvmm.virtio.queue import DescriptorChain, Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmm.eventloop import EventLoop
    from kvmm.memory import GuestMemory

# §5.1.3 Feature bits
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16

# §5.1.4 Device configuration layout
VIRTIO_NET_S_LINK_UP = 1
# struct virtio_net_config up to mtu: mac[6], status, max_virtqueue_pairs, mtu
_CONFIG = struct.Struct("<6sHHH")
assert _CONFIG.size == 12

# §5.1.6 struct virtio_net_hdr
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
NET_HDR_LEN = 12                 # flags, gso_type, hdr_len, gso_size, csum_start,
                                 # csum_offset, num_buffers (VERSION_1 always has it)
HDR_FLAGS_OFFSET = 0
HDR_GSO_TYPE_OFFSET = 1
NUM_BUFFERS_OFFSET = 10
_U16 = struct.Struct("<H")

RX_QUEUE = 0
TX_QUEUE = 1
ETH_HLEN = 14                    # include/uapi/linux/if_ether.h
MIN_TX_CHAIN = NET_HDR_LEN + ETH_HLEN
PLAIN_HDR = bytes(NET_HDR_LEN)    # no checksum or GSO request, num_buffers 0
VLAN_HLEN = 4
MIN_MTU = 68                     # IPv4's minimum (RFC 791)
MAX_MTU = 65535 - ETH_HLEN - VLAN_HLEN
# §5.1.6.3.1: with GUEST_TSO/UFO and without MRG_RXBUF "buffers of at least
# 65562 bytes", header included: the largest GSO frame is 65550 bytes.
GSO_MAX_FRAME = 65562 - NET_HDR_LEN
OVERFLOW_BYTES = 1 << 17         # more than any frame a TAP hands out (64 KiB GSO)
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

DEFAULT_QUEUE_SIZE = 256
DEFAULT_BUDGET = 128             # frames per direction per wake-up
TAP_RETRY_DELAY = 0.001          # s, after the TAP refused a write (EAGAIN/ENOBUFS)
TAP_ERROR_DELAY = 0.1            # s, after an unexpected TAP read error

OFFLOAD_FEATURES = (bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6)
                    | bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6))


def _advance(views: list[memoryview], done: int) -> list[memoryview]:
    """The part of `views` after the first `done` bytes."""
    rest = []
    for v in views:
        n = len(v)
        if done >= n:
            done -= n
            continue
        rest.append(v[done:] if done else v)
        done = 0
    return rest


def _gather(views: list[memoryview], length: int) -> bytearray:
    """A copy of the first `length` bytes of `views` (fewer if they are shorter)."""
    out = bytearray()
    for v in views:
        need = length - len(out)
        if need <= 0:
            break
        out += v[:need]
    return out


def _put(views: list[memoryview], offset: int, data: bytes) -> None:
    """Write `data` at byte `offset` of the concatenation of `views`."""
    pos = 0
    for v in views:
        n = len(v)
        if offset < n:
            take = min(n - offset, len(data) - pos)
            v[offset:offset + take] = data[pos:pos + take]
            pos += take
            if pos == len(data):
                return
            offset = 0
        else:
            offset -= n


class Net(VirtioDevice):
    """A virtio-net device for one opened TAP (kvmm.virtio.net.tap.Tap or any
    object with `fd`, `name`, `set_offload(flags)` and optionally `dropped()`).

    `loop` (a kvmm.eventloop.EventLoop, or anything with add_reader and
    remove_reader) watches the TAP; `mac` is 6 bytes; `mtu` is offered with
    VIRTIO_NET_F_MTU and bounds frames without segmentation offload.
    """

    device_id = VIRTIO_ID_NET

    def __init__(self, tap, *, mac: bytes, net_id: str = "net0", loop: EventLoop | None = None,
                 mtu: int = 1500, queue_size: int = DEFAULT_QUEUE_SIZE, offloads: bool = True,
                 rx_limiter=None, tx_limiter=None, rx_budget: int = DEFAULT_BUDGET,
                 tx_budget: int = DEFAULT_BUDGET, log_per_second: int = 5):
        self.name = f"virtio-net:{net_id}"
        super().__init__(log_per_second)
        if queue_size < 2 or queue_size & (queue_size - 1) or queue_size > 32768:
            raise ValueError(f"virtio-net queue size {queue_size} is not a power of two "
                             "in 2..32768")
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError(f"virtio-net MAC {mac.hex(':')} is not a 6-byte unicast address")
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise ValueError(f"virtio-net MTU {mtu} outside {MIN_MTU}..{MAX_MTU}")
        if rx_budget < 1 or tx_budget < 1:
            raise ValueError("virtio-net budgets must be at least one frame")
        self.tap = tap
        self.net_id = net_id
        self.mac = bytes(mac)
        self.mtu = mtu
        self.loop = loop
        self.queue_max_sizes = (queue_size, queue_size)
        features = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX)
                    | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_NET_F_MAC)
                    | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MTU)
                    | bit(VIRTIO_NET_F_MRG_RXBUF))
        if offloads:
            features |= OFFLOAD_FEATURES
        self.avail_features = features
        self.config = _CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP, 1, mtu)
        self.rx_limiter = rx_limiter
        self.tx_limiter = tx_limiter
        self.rx_budget = rx_budget
        self.tx_budget = tx_budget
        self._overflow = memoryview(bytearray(OVERFLOW_BYTES))
        self._rxq: Queue | None = None
        self._txq: Queue | None = None
        self._mem: GuestMemory | None = None
        self._interrupt: VirtioInterrupt | None = None
        self._watching = False         # the TAP fd is registered with the loop
        self._tap_ready = False        # the TAP said readable and no read found it empty since
        self._rx_kicked = False        # a wake-up from the TAP waits for process_queue(0)
        self._rx_handler = None        # runs process_queue(0) through the transport
        self._held: list[tuple] = []   # RX chains taken, not filled yet (see _take_chains)
        self._used_out: list[tuple[int, int]] = []   # RX used entries to publish
        self._held_cap = 0
        self._pending = 0              # bytes of a received frame the limiter held back
        self._retry_at = [0.0, 0.0]
        self._negotiate(0)
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = 0
        self.rx_dropped = self.tx_dropped = self.rx_deferred = 0
        self.rx_throttled = self.tx_throttled = self.tx_yields = 0
        self.rx_bad_chains = self.tx_bad_chains = self.tx_errors = self.rx_errors = 0

    # Negotiated behaviour. -------------------------------------------------------
    def _negotiate(self, acked: int) -> None:
        def has(b: int) -> bool:
            return bool(acked >> b & 1)
        self._mrg = has(VIRTIO_NET_F_MRG_RXBUF)
        self._guest_csum = has(VIRTIO_NET_F_GUEST_CSUM)
        guest_gso = self._guest_csum and (has(VIRTIO_NET_F_GUEST_TSO4)
                                          or has(VIRTIO_NET_F_GUEST_TSO6))
        host_gso = has(VIRTIO_NET_F_CSUM) and (has(VIRTIO_NET_F_HOST_TSO4)
                                               or has(VIRTIO_NET_F_HOST_TSO6))
        plain_frame = max(self.mtu, 1500) + ETH_HLEN + VLAN_HLEN
        # Room a received frame may need (header included) ...
        self._rx_need = NET_HDR_LEN + (GSO_MAX_FRAME if guest_gso else plain_frame)
        # ... and the largest frame the guest may send.
        self._tx_max = GSO_MAX_FRAME if host_gso else plain_frame
        self._tx_flags = VIRTIO_NET_HDR_F_NEEDS_CSUM if has(VIRTIO_NET_F_CSUM) else 0
        gso = {VIRTIO_NET_HDR_GSO_NONE}
        if host_gso and has(VIRTIO_NET_F_HOST_TSO4):
            gso.add(VIRTIO_NET_HDR_GSO_TCPV4)
        if host_gso and has(VIRTIO_NET_F_HOST_TSO6):
            gso.add(VIRTIO_NET_HDR_GSO_TCPV6)
        self._tx_gso = frozenset(gso)
        self._tx_ecn = host_gso and has(VIRTIO_NET_F_HOST_ECN)
        offload = 0
        if self._guest_csum:
            offload |= TUN_F_CSUM
            if has(VIRTIO_NET_F_GUEST_TSO4):
                offload |= TUN_F_TSO4
            if has(VIRTIO_NET_F_GUEST_TSO6):
                offload |= TUN_F_TSO6
            if guest_gso and has(VIRTIO_NET_F_GUEST_ECN):
                offload |= TUN_F_TSO_ECN
        self._offload = offload

    # VirtioDevice. ------------------------------------------------------------
    def queues_required(self) -> int:
        return 2

    def activate(self, queues: list[Queue], mem: GuestMemory,
                 interrupt: VirtioInterrupt) -> None:
        self._negotiate(self.acked_features)
        try:
            self.tap.set_offload(self._offload)
        except OSError as e:
            # Without the offloads the kernel hands over whole, checksummed frames:
            # still correct for the guest, only slower.
            self.log.warning("TAP %s refused offloads %#x (%s); receiving without them",
                             self.tap.name, self._offload, e)
        self._rxq, self._txq = queues[RX_QUEUE], queues[TX_QUEUE]
        self._mem = mem
        self._interrupt = interrupt
        self._tap_ready = False
        self._rx_kicked = False
        # The transport notifies both queues next; the first receive pass
        # starts watching the TAP once the guest has posted buffers.

    def reset(self) -> None:
        self._unwatch()
        if self._pending:
            self.rx_dropped += 1       # read, held back by the limiter, never delivered
        self._pending = 0
        self._held = []
        self._held_cap = 0
        self._used_out = []
        self._rxq = self._txq = None
        self._mem = None
        self._interrupt = None
        self._retry_at = [0.0, 0.0]

    def process_queue(self, index: int) -> None:
        try:
            if index == RX_QUEUE:
                self._process_rx()
            elif index == TX_QUEUE:
                self._process_tx()
        except BaseException:
            # The transport marks the device DEVICE_NEEDS_RESET and stops
            # processing it: stop reading the TAP too, or its readiness would
            # wake the loop for nothing until the guest resets the device.
            self._unwatch()
            raise

    def stats(self) -> dict[str, int]:
        out = {"rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
               "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
               "rx_dropped": self.rx_dropped, "tx_dropped": self.tx_dropped,
               "rx_deferred": self.rx_deferred, "rx_throttled": self.rx_throttled,
               "tx_throttled": self.tx_throttled, "tx_yields": self.tx_yields,
               "rx_bad_chains": self.rx_bad_chains, "tx_bad_chains": self.tx_bad_chains,
               "rx_errors": self.rx_errors, "tx_errors": self.tx_errors}
        dropped = getattr(self.tap, "dropped", None)
        if dropped is not None:
            kernel = dropped()
            if kernel is not None:
                out["tap_dropped"] = kernel
        return out

    # The TAP on the event loop. ------------------------------------------------------
    def _watch(self) -> None:
        if not self._watching and self.loop is not None:
            self.loop.add_reader(self.tap.fd, self._on_tap_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_reader(self.tap.fd)

    def set_rx_handler(self, handler) -> None:
        """`handler()` makes the transport run process_queue(RX_QUEUE) now, under
        its lock (the builder passes functools.partial(transport.process,
        RX_QUEUE)). Without one, a readable TAP asks for it through the retry
        hook (EventLoop.call_soon): the same, a few microseconds later."""
        self._rx_handler = handler

    def _on_tap_readable(self) -> None:
        """EventLoop reader callback (I/O thread, no lock): have the transport run
        process_queue(RX_QUEUE) under its lock.

        If the previous wake-up was never handled (the transport skips a queue
        that is not ready, or a device that needs a reset), stop watching: the
        readiness is level-triggered and would otherwise spin the loop.
        """
        self._tap_ready = True
        if self._rx_kicked:
            self._unwatch()
            return
        self._rx_kicked = True
        if self._rx_handler is not None:
            self._rx_handler()
        else:
            self.retry_later(0.0, RX_QUEUE)

    def _schedule(self, index: int, delay: float) -> None:
        """One retry timer per queue at a time (a notification that arrives while
        the queue waits does not add another)."""
        now = time.monotonic()
        if now >= self._retry_at[index] and self.retry_later(delay, index):
            self._retry_at[index] = now + delay

    # Receive. -------------------------------------------------------------------
    def _process_rx(self) -> None:
        self._rx_kicked = False
        q = self._rxq
        if q is None:
            return
        rx_frames = rx_bytes = 0
        free_frames = free_bytes = 0               # admitted without asking the limiter
        try:
            if self._pending:
                # A frame read earlier that the limiter held back goes first.
                if not self._rx_admitted(self._pending):
                    return
                self._publish(self._pending)
                self._pending = 0
            q.disable_notification()
            budget = self.rx_budget
            frames = 0
            held = self._held
            need = self._rx_need if self._mrg else 1
            limiter = self.rx_limiter
            limited = limiter is not None and limiter.limits()
            read, publish = self._read_frame, self._publish
            csum = self._guest_csum
            used_out = self._used_out
            while frames < budget:
                if self._held_cap < need and not self._have_room(q):
                    if q.enable_notification():
                        continue              # buffers arrived meanwhile
                    # No room for a frame: leave frames in the TAP's queue until
                    # the guest posts buffers and notifies.
                    if self._watching and self._tap_ready:
                        self.rx_deferred += 1
                    self._unwatch()
                    return
                if not self._watching:
                    self._watch()
                n = read(held)
                if n < 0:
                    return                    # TAP empty (watched) or read error (retry set)
                frames += 1
                if n == 0:
                    continue                  # dropped and counted
                if limited:
                    if not self._rx_admitted(n):
                        self._pending = n
                        return
                else:
                    free_frames += 1
                    free_bytes += n - NET_HDR_LEN
                entry = held[0]
                if n <= entry[2]:
                    # The usual frame: one chain. Its first buffer holds the
                    # header (_take_chains checked), where the kernel skipped
                    # num_buffers: set it to 1 (le16), and zero the flags
                    # without GUEST_CSUM (§5.1.6.4, §5.1.6.4.1).
                    v = entry[1][0]
                    if len(v) >= NET_HDR_LEN:
                        v[NUM_BUFFERS_OFFSET] = 1
                        v[NUM_BUFFERS_OFFSET + 1] = 0
                        if not csum:
                            v[HDR_FLAGS_OFFSET] = 0
                        used_out.append((entry[0], n))
                        del held[0]
                        self._held_cap -= entry[2]
                        rx_frames += 1
                        rx_bytes += n - NET_HDR_LEN
                        continue
                publish(n)
        finally:
            self.rx_frames += rx_frames
            self.rx_bytes += rx_bytes
            if free_frames and self.rx_limiter is not None:
                self.rx_limiter.count(free_frames, free_bytes)
            if self._used_out:
                q.add_used_many(self._used_out)    # one index update per pass
                self._used_out = []
            if q.needs_notification():
                self._interrupt.signal_used()

    def _have_room(self, q: Queue) -> bool:
        """Take chains from the ring until a full frame fits (one chain without
        MRG_RXBUF, enough chains for `_rx_need` bytes with it)."""
        if self._mrg:
            need = self._rx_need
            while self._held_cap < need:
                if not self._take_chains(q):
                    # All the ring's descriptors are ours and still too small:
                    # use them (a larger frame is dropped and counted).
                    return self._held_cap > 0 and len(self._held) >= q.size
            return True
        while not self._held:
            if not self._take_chains(q):
                return False
        return True

    def _take_chains(self, q: Queue) -> bool:
        """Move receive chains from the ring into `_held`: every available
        one-buffer chain up to the first of another shape, or else that one
        chain; False when the ring is empty. A chain the device cannot write a
        header into goes back used, length 0."""
        while True:
            batch = q.pop_plain(q.size, True)
            if batch:
                took = False
                for head, _addr, view in batch:
                    took = self._hold(q, head, [view], len(view)) or took
                if took:
                    return True
                continue
            chain = q.pop()                # any other shape, checked whole
            if chain is None:
                return False
            if not all(w for _a, _n, w in chain.buffers):
                self._bad_chain(q, chain.head, "a device-readable buffer in a receive chain")
                continue
            if self._hold(q, chain.head, chain.views(self._mem), chain.total_len):
                return True

    def _hold(self, q: Queue, head: int, views: list, total: int) -> bool:
        """Keep a device-writable receive chain of `total` bytes in `_held`, or
        give it back used, length 0, if the header does not fit (False)."""
        if total < NET_HDR_LEN:
            self._bad_chain(q, head, f"a {total}-byte receive chain (the header alone "
                            f"needs {NET_HDR_LEN})")
            return False
        # (head, views, capacity, the iovec for a frame that fits this chain alone)
        self._held.append((head, views, total, views + [self._overflow]))
        self._held_cap += total
        return True

    def _bad_chain(self, q: Queue, head: int, what: str) -> None:
        self.rx_bad_chains += 1
        self.log.warning("returned %s unused", what)
        q.add_used(head, 0)

    def _read_frame(self, held: list) -> int:
        """Read one frame into the held chains: its length with the header, 0 if
        it was dropped (too large for them, or a runt), -1 if there was none."""
        _head, _views, capacity, iov = held[0]
        if capacity < self._rx_need and self._mrg and len(held) > 1:
            # Merge chains until the largest frame fits (or IOV_MAX is reached).
            need = self._rx_need
            iov = []
            capacity = 0
            for _head, views, cap, _iov in held:
                iov += views
                capacity += cap
                if capacity >= need:
                    break
            if len(iov) >= IOV_MAX:
                del iov[IOV_MAX - 1:]
                capacity = sum(len(v) for v in iov)
            iov.append(self._overflow)
        if len(iov) > IOV_MAX:                   # one chain of more than IOV_MAX - 1 buffers
            iov = iov[:IOV_MAX - 1] + [self._overflow]
            capacity = sum(len(v) for v in iov[:-1])
        try:
            n = os.readv(self.tap.fd, iov)
        except BlockingIOError:
            self._tap_ready = False
            return -1
        except InterruptedError:
            return -1
        except OSError as e:
            self.rx_errors += 1
            self.log.error("reading TAP %s failed: %s", self.tap.name, e)
            self._unwatch()
            self._schedule(RX_QUEUE, TAP_ERROR_DELAY)
            return -1
        if n > capacity:
            self.rx_dropped += 1
            self.log.warning("dropped a %d-byte frame: the guest's receive buffers hold %d",
                             n - NET_HDR_LEN, capacity - NET_HDR_LEN)
            return 0
        if n < NET_HDR_LEN + ETH_HLEN:
            self.rx_dropped += 1
            return 0
        return n

    def _rx_admitted(self, n: int) -> bool:
        limiter = self.rx_limiter
        if limiter is None:
            return True
        wait = limiter.admit_bytes(n - NET_HDR_LEN)
        if wait <= 0:
            return True
        self.rx_throttled += 1
        self._unwatch()                      # the rest waits in the TAP
        self._schedule(RX_QUEUE, wait)
        return False

    def _publish(self, n: int) -> None:
        """Hand the frame of `n` bytes (header included) in the held chains to
        the guest: fix up the header, then one used element per chain (published
        at the end of the pass, see _process_rx)."""
        held = self._held
        head, first, cap, _iov = held[0]
        if n <= cap or not self._mrg:
            used = ((head, n),)
            count = 1
        else:
            used = []
            left = n
            for head, _views, cap, _iov in held:
                take = cap if cap < left else left
                used.append((head, take))
                left -= take
                if not left:
                    break
            count = len(used)
        # The kernel fills the first 10 bytes and skips num_buffers (it only
        # knows struct virtio_net_hdr): that field is the device's (§5.1.6.4).
        if len(first[0]) >= NET_HDR_LEN:
            v = first[0]
            _U16.pack_into(v, NUM_BUFFERS_OFFSET, count)
            if not self._guest_csum:
                v[HDR_FLAGS_OFFSET] = 0       # §5.1.6.4.1: flags zero without GUEST_CSUM
        else:
            _put(first, NUM_BUFFERS_OFFSET, _U16.pack(count))
            if not self._guest_csum:
                _put(first, HDR_FLAGS_OFFSET, b"\0")
        self._used_out += used
        if count == 1:
            self._held_cap -= held.pop(0)[2]
        else:
            self._held_cap -= sum(entry[2] for entry in held[:count])
            del held[:count]
        self.rx_frames += 1
        self.rx_bytes += n - NET_HDR_LEN

    # Transmit. ------------------------------------------------------------------
    def _process_tx(self) -> None:
        q = self._txq
        if q is None:
            return
        budget = self.tx_budget
        frames = 0
        pop_plain = q.pop_plain
        try:
            while True:
                q.disable_notification()
                while True:
                    if frames >= budget:
                        # Let the loop serve everything else, then go on. A
                        # driver that asked for an interrupt by now (used_event)
                        # gets it below and refills while the rest is sent.
                        self.tx_yields += 1
                        self._schedule(TX_QUEUE, 0.0)
                        return
                    batch = pop_plain(budget - frames, False)
                    if batch:
                        frames += len(batch)
                        sent = self._send_plain(q, batch)
                        if sent < len(batch):
                            q.undo_pop(len(batch) - sent)   # they wait in the ring
                            return
                        continue
                    chain = q.pop()                # any other shape, checked whole
                    if chain is None:
                        break
                    frames += 1
                    if not self._send_checked(chain):
                        q.undo_pop()
                        return
                    q.add_used(chain.head, 0)
                if not q.enable_notification():
                    break
        finally:
            if q.needs_notification():
                self._interrupt.signal_used()

    def _send_plain(self, q: Queue, batch: list) -> int:
        """Send (or drop, counting them) the one-buffer chains of Queue.pop_plain
        in order, until one must wait; publish the sent ones as used. Returns
        how many were taken."""
        done = []
        lo, hi = MIN_TX_CHAIN, self._tx_max + NET_HDR_LEN
        limiter = self.tx_limiter
        limited = limiter is not None and limiter.limits()
        fd = self.tap.fd
        writev = os.writev
        frames = nbytes = 0
        try:
            for head, addr, view in batch:
                total = len(view)
                if lo <= total <= hi and view[:NET_HDR_LEN] == PLAIN_HDR:
                    # The usual frame: no offload requested. The header that
                    # goes to the TAP is our own copy of the one checked.
                    iov = (PLAIN_HDR, view[NET_HDR_LEN:])
                    flen = total - NET_HDR_LEN
                    if limited:
                        if not self._transmit(iov, flen):
                            break
                    else:
                        try:
                            writev(fd, iov)
                            frames += 1
                            nbytes += flen
                        except OSError as e:
                            if not self._write_failed(e, flen):
                                break
                    done.append((head, 0))
                    continue
                if not self._send_checked(DescriptorChain(head, [(addr, total, False)], total)):
                    break
                done.append((head, 0))
        finally:
            self.tx_frames += frames
            self.tx_bytes += nbytes
            if frames and limiter is not None:
                limiter.count(frames, nbytes)
            q.add_used_many(done)
        return len(done)

    def _send_checked(self, chain) -> bool:
        """Send (or drop, counting it) one transmit chain of any shape, each check
        with its own reason; False to try it again later. (One-buffer chains with
        a plain header take the shorter way of _send_plain.)"""
        bufs = chain.buffers
        total = chain.total_len
        if len(bufs) == 1:
            addr, _n, writable = bufs[0]
            views = None
        else:
            writable = False
            for _a, _n, w in bufs:
                writable = writable or w
        if writable:
            return self._drop_tx("a device-writable buffer in a transmit chain", bad=True)
        if total < NET_HDR_LEN + ETH_HLEN:
            return self._drop_tx(f"a {total}-byte transmit chain, shorter than the header and "
                                 "an Ethernet header", bad=True)
        flen = total - NET_HDR_LEN
        if flen > self._tx_max:
            return self._drop_tx(f"a {flen}-byte frame, larger than the {self._tx_max} bytes "
                                 "negotiated")
        # Copy the header once, check the copy, send the copy (STYLE rule 7).
        if len(bufs) == 1:
            view = self._mem.view(addr, total)
            hdr = view[:NET_HDR_LEN].tobytes()
            iov = (hdr, view[NET_HDR_LEN:])
        else:
            views = chain.views(self._mem)
            hdr = bytes(_gather(views, NET_HDR_LEN))
            iov = None
        if hdr[HDR_FLAGS_OFFSET] or hdr[HDR_GSO_TYPE_OFFSET]:
            flags = hdr[HDR_FLAGS_OFFSET]
            gso = hdr[HDR_GSO_TYPE_OFFSET]
            if flags & ~self._tx_flags:
                return self._drop_tx(f"header flags {flags:#x} the driver may not set",
                                     bad=True)
            if gso & ~VIRTIO_NET_HDR_GSO_ECN not in self._tx_gso or (
                    gso & VIRTIO_NET_HDR_GSO_ECN and not self._tx_ecn):
                return self._drop_tx(f"header gso_type {gso:#x} was not negotiated", bad=True)
        if hdr[NUM_BUFFERS_OFFSET] or hdr[NUM_BUFFERS_OFFSET + 1]:
            hdr = hdr[:NUM_BUFFERS_OFFSET] + b"\0\0"      # the driver's to zero (§5.1.6.2)
            if iov is not None:
                iov = (hdr, iov[1])
        if iov is None:
            iov = [hdr]
            iov += _advance(views, NET_HDR_LEN)
            if len(iov) > IOV_MAX:
                iov = [hdr, b"".join(iov[1:])]
        return self._transmit(iov, flen)

    def _transmit(self, iov, flen: int) -> bool:
        """Rate-limit, then write one checked frame (header copy first) to the TAP."""
        limiter = self.tx_limiter
        if limiter is not None:
            wait = limiter.admit_bytes(flen)     # counts it when nothing limits
            if wait > 0:
                self.tx_throttled += 1
                self._schedule(TX_QUEUE, wait)
                return False
        try:
            os.writev(self.tap.fd, iov)
        except OSError as e:
            return self._write_failed(e, flen)
        self.tx_frames += 1
        self.tx_bytes += flen
        return True

    def _write_failed(self, e: OSError, flen: int) -> bool:
        """A TAP write of a `flen`-byte frame failed: False to try it again later
        (the TAP is full), True when it was dropped and counted."""
        if isinstance(e, (BlockingIOError, InterruptedError)):
            self._schedule(TX_QUEUE, TAP_RETRY_DELAY)
            return False
        # EIO: the TAP is down; EINVAL: the kernel refused the header.
        self.tx_errors += 1
        return self._drop_tx(f"TAP {self.tap.name} refused a {flen}-byte frame "
                             f"({e.strerror or e})")

    def _drop_tx(self, why: str, bad: bool = False) -> bool:
        self.tx_dropped += 1
        if bad:
            self.tx_bad_chains += 1
        self.log.warning("dropped %s", why)
        return True
