"""The split virtqueue, device side (virtio 1.2 §2.7), with every check.

All virtqueue validation lives here (STYLE rule 8). A guest that breaks a rule
gets a `QueueError`; the transport then marks the device DEVICE_NEEDS_RESET.
The shape follows rust-vmm's virtio-queue and Firecracker's `queue.rs`:

- the queue size is a power of two no larger than the device's maximum, and
  the three rings are aligned and lie wholly inside guest RAM: checked when
  the driver sets QueueReady, before the device is activated;
- the available index may run at most `size` entries ahead of the device;
- every head and `next` index is below the size of the table it indexes;
- a chain walk has a budget of one step per table entry, so a `next` loop ends;
- a chain's buffers add up to less than 2**32 bytes (a used length is 32 bits);
- an indirect table (VIRTIO_RING_F_INDIRECT_DESC) is a non-empty multiple of
  16 bytes inside guest RAM; there is no indirect descriptor inside an
  indirect table, and none with VIRTQ_DESC_F_NEXT (§2.7.5.3.1);
- every descriptor is read once, into local values, then checked, then used
  (another vCPU can rewrite guest memory at any moment).

The rings are reached through memoryviews that GuestMemory.view hands out for
the checked ranges, so every ring access stays inside the checked span.
Ordering: a used element is written before the used index that publishes it.
"""
from __future__ import annotations

import struct
import threading

from kvmm.memory import GuestMemory, GuestMemoryError
from kvmm.virtio.errors import QueueError

# §2.7.5 The Virtqueue Descriptor Table: flags
VIRTQ_DESC_F_NEXT = 0b001
VIRTQ_DESC_F_WRITE = 0b010
VIRTQ_DESC_F_INDIRECT = 0b100
# §2.7.6 The Virtqueue Available Ring: flags
VIRTQ_AVAIL_F_NO_INTERRUPT = 0b1
# §2.7.8 The Virtqueue Used Ring: flags
VIRTQ_USED_F_NO_NOTIFY = 0b1

# §6 Reserved Feature Bits (bit numbers)
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

MAX_QUEUE_SIZE = 32768          # §2.7: "The maximum Queue Size value is 32768"
MAX_INDIRECT_ENTRIES = MAX_QUEUE_SIZE
MAX_CHAIN_BYTES = 0xFFFF_FFFF   # a used element's len is le32 (§2.7.8)

# §2.7 alignment requirements and part sizes (Queue Part / Alignment / Size)
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
DESC_SIZE = 16                  # struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
USED_ELEM_SIZE = 8              # struct virtq_used_elem { le32 id; le32 len; }
RING_HEADER = 4                 # le16 flags; le16 idx;


def desc_table_bytes(size: int) -> int:
    return DESC_SIZE * size


def avail_ring_bytes(size: int) -> int:
    return RING_HEADER + 2 * size + 2        # ring[size] then used_event


def used_ring_bytes(size: int) -> int:
    return RING_HEADER + USED_ELEM_SIZE * size + 2   # ring[size] then avail_event


_U16 = struct.Struct("<H")
_FENCE = threading.Lock()     # acquire + release: a full memory barrier
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


class DescriptorChain:
    """One available chain, walked and checked.

    `head` is the index to hand back in the used ring; `buffers` lists
    (guest address, length, device-writable) in chain order, every one lying
    inside a single region of guest RAM; `total_len` is the sum of lengths.
    """

    __slots__ = ("head", "buffers", "total_len")

    def __init__(self, head: int, buffers: list[tuple[int, int, bool]], total_len: int):
        self.head = head
        self.buffers = buffers
        self.total_len = total_len

    def views(self, mem: GuestMemory) -> list[memoryview]:
        """A memoryview per buffer (zero-copy, for os.preadv / os.pwritev)."""
        view = mem.view
        return [view(addr, length) for addr, length, _w in self.buffers]

    def readable_views(self, mem: GuestMemory) -> list[memoryview]:
        view = mem.view
        return [view(addr, length) for addr, length, w in self.buffers if not w]

    def writable_views(self, mem: GuestMemory) -> list[memoryview]:
        view = mem.view
        return [view(addr, length) for addr, length, w in self.buffers if w]

    def __repr__(self) -> str:
        bufs = ", ".join(f"{'w' if w else 'r'}[{a:#x}+{n:#x}]" for a, n, w in self.buffers)
        return f"DescriptorChain(head={self.head}, {bufs})"


class Queue:
    """A split virtqueue as the device sees it.

    The transport stores what the driver writes (`size`, `desc_table`,
    `avail_ring`, `used_ring`), calls `validate` when the driver sets
    QueueReady and `activate` when the device starts. The device then calls
    `pop` until it returns None, `add_used` per finished chain, and
    `needs_notification` once per batch.
    """

    __slots__ = ("max_size", "size", "ready", "desc_table", "avail_ring", "used_ring",
                 "next_avail", "next_used", "event_idx", "indirect", "broken",
                 "_mask", "_desc", "_avail", "_used", "_mem", "_regions", "_avail_idx",
                 "_signalled_used", "_used_event_off", "_avail_event_off", "_used_flags",
                 "_used_idx", "_avail_event", "_used_ring", "_avail_idx_view",
                 "_avail_ring", "_region_views")

    def __init__(self, max_size: int = 256):
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue maximum size {max_size} is not a power of two in "
                             f"1..{MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (§2.4)."""
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self.indirect = False
        self.broken: str | None = None
        self._mask = 0
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._mem: GuestMemory | None = None
        self._regions: tuple[tuple[int, int], ...] = ()
        self._region_views: tuple[tuple[int, int, memoryview], ...] = ()
        self._avail_idx = 0
        self._signalled_used = 0
        self._used_event_off = 0
        self._avail_event_off = 0

    @property
    def activated(self) -> bool:
        return self._avail is not None

    # Set-up checks. -------------------------------------------------------
    def validate(self, mem: GuestMemory) -> None:
        """Check the driver's configuration; raise QueueError if it is unusable."""
        size = self.size
        if not 0 < size <= self.max_size or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        for name, addr, align, length in (
                ("descriptor table", self.desc_table, DESC_ALIGN, desc_table_bytes(size)),
                ("available ring", self.avail_ring, AVAIL_ALIGN, avail_ring_bytes(size)),
                ("used ring", self.used_ring, USED_ALIGN, used_ring_bytes(size))):
            if addr % align:
                raise QueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not mem.contains(addr, length):
                raise QueueError(f"{name} [{addr:#x}, +{length:#x}) is not inside one "
                                 "region of guest RAM")

    def activate(self, mem: GuestMemory, features: int) -> None:
        """Validate again and map the rings; `features` are the negotiated bits."""
        self.validate(mem)
        size = self.size
        try:
            self._desc = mem.view(self.desc_table, desc_table_bytes(size))
            self._avail = mem.view(self.avail_ring, avail_ring_bytes(size))
            self._used = mem.view(self.used_ring, used_ring_bytes(size))
        except GuestMemoryError as e:    # cannot happen after validate; keep it a QueueError
            raise QueueError(str(e)) from None
        self._mem = mem
        self._regions = tuple((r.guest_addr, r.guest_addr + r.size) for r in mem.regions)
        self._region_views = tuple((r.guest_addr, r.guest_addr + r.size, r.view)
                                   for r in mem.regions)
        self._mask = size - 1
        self.event_idx = bool(features >> VIRTIO_RING_F_EVENT_IDX & 1)
        self.indirect = bool(features >> VIRTIO_RING_F_INDIRECT_DESC & 1)
        self._used_event_off = RING_HEADER + 2 * size
        self._avail_event_off = RING_HEADER + USED_ELEM_SIZE * size
        # The fields the driver reads while the device runs are written with one
        # store each, through typed views: struct.pack_into zero-fills its target
        # before writing, and a driver polling used.idx would see it drop to 0.
        used = self._used
        self._used_ring = used[RING_HEADER:RING_HEADER + USED_ELEM_SIZE * size].cast("I")
        avail = self._avail
        self._avail_idx_view = avail[2:4].cast("H")
        self._avail_ring = avail[RING_HEADER:RING_HEADER + 2 * size].cast("H")
        self._used_flags = used[0:2].cast("H")
        self._used_idx = used[2:4].cast("H")
        off = self._avail_event_off
        self._avail_event = used[off:off + 2].cast("H")
        self._avail_idx = self.next_avail
        self._signalled_used = self.next_used
        self.broken = None

    # Taking chains. -------------------------------------------------------
    def _fail(self, reason: str) -> QueueError:
        self.broken = reason
        return QueueError(reason)

    def pending(self) -> int:
        """How many chains the driver has made available and the device not taken."""
        avail = self._avail
        if avail is None:
            return 0
        idx = _U16.unpack_from(avail, 2)[0]
        count = (idx - self.next_avail) & 0xFFFF
        if count > self.size:
            raise self._fail(f"available index {idx} is {count} entries ahead of the "
                             f"device's {self.next_avail}, more than the queue size {self.size}")
        return count

    def pop(self) -> DescriptorChain | None:
        """The next available chain, walked and checked, or None if there is none."""
        if self.broken is not None:
            raise QueueError(self.broken)
        avail = self._avail
        if avail is None:
            raise QueueError("queue used before activation")
        nxt = self.next_avail
        if nxt == self._avail_idx:
            idx = self._avail_idx_view[0]                # read once
            if idx == nxt:
                return None
            if (idx - nxt) & 0xFFFF > self.size:
                raise self._fail(
                    f"available index {idx} is {(idx - nxt) & 0xFFFF} entries ahead of the "
                    f"device's {nxt}, more than the queue size {self.size}")
            self._avail_idx = idx
        head = self._avail_ring[nxt & self._mask]
        self.next_avail = (nxt + 1) & 0xFFFF
        if head >= self.size:
            return self._walk(head)                # fails, naming the bad head
        first = _DESC.unpack_from(self._desc, head << 4)   # copy once, then check
        addr, length, flags, _nxt = first
        if not flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT):
            # The common chain, one plain descriptor: the checks of _walk, inline.
            end = addr + length
            for start, stop in self._regions:
                if start <= addr < stop and end <= stop:
                    return DescriptorChain(
                        head, [(addr, length, bool(flags & VIRTQ_DESC_F_WRITE))], length)
        return self._walk(head, first)

    def pop_plain(self, limit: int, writable: bool) -> list[tuple[int, int, memoryview]]:
        """Up to `limit` available chains that are each a single descriptor of one
        direction (device-writable if `writable`, else device-readable), as
        (head, guest address, a view of the buffer). It stops before the first
        chain of any other shape, which pop() then returns (or rejects) whole.

        The usual request of a network queue, with pop()'s checks in fewer
        steps: the available index is read once per batch, each descriptor
        copied once, its buffer checked against the RAM regions.
        """
        if self.broken is not None:
            raise QueueError(self.broken)
        if self._avail is None:
            raise QueueError("queue used before activation")
        nxt = self.next_avail
        avail_idx = self._avail_idx
        if nxt == avail_idx:
            avail_idx = self._avail_idx_view[0]          # read once
            if avail_idx == nxt:
                return []
            if (avail_idx - nxt) & 0xFFFF > self.size:
                raise self._fail(
                    f"available index {avail_idx} is {(avail_idx - nxt) & 0xFFFF} entries "
                    f"ahead of the device's {nxt}, more than the queue size {self.size}")
            self._avail_idx = avail_idx
        count = min(limit, (avail_idx - nxt) & 0xFFFF)
        want = VIRTQ_DESC_F_WRITE if writable else 0
        ring, mask, size, table = self._avail_ring, self._mask, self.size, self._desc
        regions = self._region_views
        start0, stop0, view0 = regions[0]          # most guests have one region: tried first
        unpack = _DESC.unpack_from
        out = []
        append = out.append
        for _ in range(count):
            head = ring[nxt & mask]
            if head >= size:
                break                                  # pop() fails, naming it
            addr, length, flags, _next = unpack(table, head << 4)   # copy once, then check
            if flags != want:
                break                                  # a longer chain, or the other direction
            end = addr + length
            if start0 <= addr < stop0 and end <= stop0:
                append((head, addr, view0[addr - start0:end - start0]))
            else:
                for start, stop, view in regions:
                    if start <= addr < stop and end <= stop:
                        append((head, addr, view[addr - start:end - start]))
                        break
                else:
                    break                              # pop() fails, naming the buffer
            nxt = (nxt + 1) & 0xFFFF
        self.next_avail = nxt
        return out

    def undo_pop(self, count: int = 1) -> None:
        """Give back the `count` chains the last pops returned (e.g. a throttled
        request): the next pop returns them again, re-read from guest memory."""
        self.next_avail = (self.next_avail - count) & 0xFFFF

    def _walk(self, head: int, first: tuple | None = None) -> DescriptorChain:
        size = self.size
        if head >= size:
            raise self._fail(f"available ring names head {head}, outside the queue size {size}")
        table = self._desc
        table_size = size
        budget = size
        idx = head
        in_indirect = False
        buffers: list[tuple[int, int, bool]] = []
        total = 0
        regions = self._regions
        unpack = _DESC.unpack_from
        while True:
            if budget == 0:
                raise self._fail(f"chain at head {head} is longer than its descriptor "
                                 f"table ({table_size} entries): a next loop")
            budget -= 1
            if first is not None:                  # the head, already copied by pop()
                addr, length, flags, nxt = first
                first = None
            else:
                addr, length, flags, nxt = unpack(table, idx << 4)   # copy once, then check
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise self._fail(f"chain at head {head}: indirect descriptor, but "
                                     "VIRTIO_RING_F_INDIRECT_DESC was not negotiated")
                if in_indirect:
                    raise self._fail(f"chain at head {head}: indirect descriptor inside an "
                                     "indirect table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise self._fail(f"chain at head {head}: descriptor has both INDIRECT "
                                     "and NEXT")
                if length == 0 or length % DESC_SIZE:
                    raise self._fail(f"chain at head {head}: indirect table length {length} "
                                     f"is not a non-zero multiple of {DESC_SIZE}")
                entries = length // DESC_SIZE
                if entries > MAX_INDIRECT_ENTRIES:
                    raise self._fail(f"chain at head {head}: indirect table of {entries} "
                                     f"entries (at most {MAX_INDIRECT_ENTRIES})")
                try:
                    table = self._mem.view(addr, length)
                except GuestMemoryError as e:
                    raise self._fail(f"chain at head {head}: indirect table: {e}") from None
                table_size = entries
                budget = entries
                idx = 0
                in_indirect = True
                continue
            end = addr + length
            for start, stop in regions:
                if start <= addr < stop and end <= stop:
                    break
            else:
                raise self._fail(f"chain at head {head}: buffer [{addr:#x}, +{length:#x}) "
                                 "is not inside one region of guest RAM")
            total += length
            if total > MAX_CHAIN_BYTES:
                raise self._fail(f"chain at head {head}: buffers add up to more than "
                                 f"{MAX_CHAIN_BYTES:#x} bytes")
            buffers.append((addr, length, bool(flags & VIRTQ_DESC_F_WRITE)))
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(head, buffers, total)
            if nxt >= table_size:
                raise self._fail(f"chain at head {head}: next index {nxt} outside the "
                                 f"table of {table_size} entries")
            idx = nxt

    # Returning chains. ----------------------------------------------------
    def add_used(self, head: int, written: int) -> None:
        """Put (head, bytes written) in the used ring and publish it.

        The element is written before the index that makes it visible.
        """
        if not 0 <= head < self.size:
            raise ValueError(f"used head {head} outside the queue size {self.size}")
        if not 0 <= written <= MAX_CHAIN_BYTES:
            raise ValueError(f"used length {written} does not fit in 32 bits")
        nxt = self.next_used
        slot = (nxt & self._mask) << 1
        ring = self._used_ring                # struct virtq_used_elem {le32 id; le32 len;}
        ring[slot] = head
        ring[slot + 1] = written
        nxt = (nxt + 1) & 0xFFFF
        self.next_used = nxt
        self._used_idx[0] = nxt

    def add_used_many(self, used: list[tuple[int, int]]) -> None:
        """add_used(head, written) for each (head, written) of `used`, in order,
        with the used index published once, after the last element."""
        if not used:
            return
        size = self.size
        nxt = self.next_used
        mask = self._mask
        ring = self._used_ring
        for head, written in used:
            if not 0 <= head < size:
                raise ValueError(f"used head {head} outside the queue size {size}")
            if not 0 <= written <= MAX_CHAIN_BYTES:
                raise ValueError(f"used length {written} does not fit in 32 bits")
            slot = (nxt & mask) << 1
            ring[slot] = head
            ring[slot + 1] = written
            nxt = (nxt + 1) & 0xFFFF
        self.next_used = nxt
        self._used_idx[0] = nxt

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for the used entries added since
        the last call (§2.7.7.2: used_event with EVENT_IDX, else the
        VIRTQ_AVAIL_F_NO_INTERRUPT flag)."""
        new = self.next_used
        old = self._signalled_used
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            used_event = _U16.unpack_from(self._avail, self._used_event_off)[0]
            # vring_need_event(): notify if used_event lies in [old, new).
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        flags = _U16.unpack_from(self._avail, 0)[0]
        return not flags & VIRTQ_AVAIL_F_NO_INTERRUPT

    def disable_notification(self) -> None:
        """Ask the driver not to notify while the device is draining the queue."""
        if not self.event_idx:
            self._used_flags[0] = VIRTQ_USED_F_NO_NOTIFY
        # With EVENT_IDX, leaving avail_event behind next_avail has the same effect.

    def enable_notification(self) -> bool:
        """Ask for notifications again; True if chains arrived meanwhile (the
        caller must then drain again, or a notification could be lost)."""
        if self.event_idx:
            self._avail_event[0] = self.next_avail
        else:
            self._used_flags[0] = 0
        # A full barrier between that store and the load below (virtio 1.2 §2.7.10,
        # Linux's virtqueue_enable_cb_prepare + mb()): x86 may satisfy the load
        # before the store is visible, and the driver, which stores avail.idx and
        # then loads avail_event, could then skip its notification while the
        # device saw no new chain. A lock round trip is a locked instruction.
        _FENCE.acquire()
        _FENCE.release()
        return _U16.unpack_from(self._avail, 2)[0] != self.next_avail
