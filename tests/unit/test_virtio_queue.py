"""The split virtqueue (kvmm/virtio/queue.py): every rule of STYLE rule 8, with
hand-written cases and hypothesis-generated hostile rings checked against an
independent reference walker."""
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from kvmm.memory import GuestMemory
from kvmm.virtio.errors import QueueError
from kvmm.virtio.queue import (
    MAX_CHAIN_BYTES, MAX_INDIRECT_ENTRIES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY, Queue,
)
from tests.unit.virtio.driver import DESC, VirtqDriver

MiB = 1 << 20
# Two regions with a hole between them, so "inside one region" is exercised.
LOW_END = 1 * MiB
HIGH = 2 * MiB
HIGH_END = 3 * MiB
RINGS = 0x1000
INDIRECT_AREA = 0x40000
DATA = 0x80000
INDIRECT = 1 << VIRTIO_RING_F_INDIRECT_DESC
EVENT_IDX = 1 << VIRTIO_RING_F_EVENT_IDX


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory([(0, LOW_END), (HIGH, HIGH_END - HIGH)])
    yield m
    m.close()


def make_queue(mem, size=8, features=INDIRECT, max_size=256, base=RINGS):
    vq = VirtqDriver.at(mem, size, base)
    q = Queue(max_size)
    q.size = size
    q.desc_table, q.avail_ring, q.used_ring = vq.desc, vq.avail, vq.used
    q.activate(mem, features)
    return q, vq


def pop_all(q):
    out = []
    while (chain := q.pop()) is not None:
        out.append(chain)
    return out


# Set-up checks. -------------------------------------------------------------
@pytest.mark.parametrize("max_size", [0, 3, 100, 65536])
def test_max_size_must_be_power_of_two(max_size):
    with pytest.raises(ValueError):
        Queue(max_size)


@pytest.mark.parametrize("size", [0, 3, 6, 512, 1 << 16])
def test_size_checked(mem, size):
    q = Queue(256)
    q.size = size
    q.desc_table, q.avail_ring, q.used_ring = RINGS, RINGS + 0x1000, RINGS + 0x2000
    with pytest.raises(QueueError, match="power of two"):
        q.validate(mem)


@pytest.mark.parametrize("field,addr,match", [
    ("desc_table", RINGS + 8, "16-byte aligned"),
    ("avail_ring", RINGS + 0x1001, "2-byte aligned"),
    ("used_ring", RINGS + 0x2002, "4-byte aligned"),
    ("desc_table", LOW_END - 0x40, "inside one region"),      # runs into the hole
    ("avail_ring", LOW_END + 0x1000, "inside one region"),    # in the hole
    ("used_ring", HIGH_END - 8, "inside one region"),         # runs off the end
    ("used_ring", (1 << 64) - 4, "inside one region"),        # wraps 2**64
])
def test_ring_placement_checked(mem, field, addr, match):
    q = Queue(256)
    q.size = 16
    q.desc_table, q.avail_ring, q.used_ring = RINGS, RINGS + 0x1000, RINGS + 0x2000
    q.validate(mem)
    setattr(q, field, addr)
    with pytest.raises(QueueError, match=match):
        q.validate(mem)
    with pytest.raises(QueueError):
        q.activate(mem, 0)
    assert not q.activated


def test_rings_in_high_region(mem):
    q, vq = make_queue(mem, size=4, base=HIGH + 0x1000)
    vq.add_chain([(HIGH + 0x8000, 100, False)])
    [chain] = pop_all(q)
    assert chain.buffers == [(HIGH + 0x8000, 100, False)]


# Taking chains. --------------------------------------------------------------
def test_simple_chains_and_used_ring(mem):
    q, vq = make_queue(mem)
    h1 = vq.add_chain([(DATA, 16, False), (DATA + 0x100, 512, True), (DATA + 0x400, 1, True)])
    h2 = vq.add_chain([(DATA + 0x1000, 4096, False)])
    c1, c2 = pop_all(q)
    assert (c1.head, c2.head) == (h1, h2)
    assert c1.buffers == [(DATA, 16, False), (DATA + 0x100, 512, True), (DATA + 0x400, 1, True)]
    assert c1.total_len == 529
    assert [len(v) for v in c1.views(mem)] == [16, 512, 1]
    assert [len(v) for v in c1.writable_views(mem)] == [512, 1]
    assert [len(v) for v in c1.readable_views(mem)] == [16]
    q.add_used(c2.head, 0)
    q.add_used(c1.head, 513)
    assert vq.get_used() == [(h2, 0), (h1, 513)]
    assert q.pop() is None


def test_views_are_zero_copy(mem):
    q, vq = make_queue(mem)
    vq.add_chain([(DATA, 8, True)])
    [chain] = pop_all(q)
    chain.views(mem)[0][:] = b"ABCDEFGH"
    assert mem.read(DATA, 8) == b"ABCDEFGH"


def test_used_ring_wraps_and_index_wraps_at_2_16(mem):
    q, vq = make_queue(mem, size=4)
    q.next_avail = q.next_used = 0xFFFE
    q._avail_idx = 0xFFFE
    vq.avail_idx = vq.last_used = 0xFFFE
    heads = []
    for k in range(4):
        heads.append(vq.add_chain([(DATA + 64 * k, 64, True)]))
    chains = pop_all(q)
    assert [c.head for c in chains] == heads
    for c in chains:
        q.add_used(c.head, 64)
    assert q.next_used == 2 and vq.used_idx() == 2
    assert vq.get_used() == [(h, 64) for h in heads]


def test_avail_idx_too_far_ahead_breaks_queue(mem):
    q, vq = make_queue(mem, size=8)
    vq.set_avail_idx(9)
    with pytest.raises(QueueError, match="ahead"):
        q.pop()
    assert q.broken
    vq.set_avail_idx(1)       # even a sane index afterwards: the queue stays broken
    with pytest.raises(QueueError):
        q.pop()


def test_avail_idx_exactly_size_ahead_is_fine(mem):
    q, vq = make_queue(mem, size=4)
    for k in range(4):
        vq.add_chain([(DATA, 1, True)])
    assert q.pending() == 4
    assert len(pop_all(q)) == 4


def test_pending_checks_too(mem):
    q, vq = make_queue(mem, size=4)
    vq.set_avail_idx(0x8000)
    with pytest.raises(QueueError):
        q.pending()


def test_head_out_of_range(mem):
    q, vq = make_queue(mem, size=8)
    vq.set_avail_entry(0, 8)
    vq.set_avail_idx(1)
    with pytest.raises(QueueError, match="head 8"):
        q.pop()


def test_next_out_of_range(mem):
    q, vq = make_queue(mem, size=8)
    vq.write_desc(0, DATA, 16, VIRTQ_DESC_F_NEXT, 8)
    vq.publish(0)
    with pytest.raises(QueueError, match="next index 8"):
        q.pop()


@pytest.mark.parametrize("loop", [[0], [0, 1], [3, 5, 1]])
def test_next_loop_ends(mem, loop):
    q, vq = make_queue(mem, size=8)
    for k, idx in enumerate(loop):
        vq.write_desc(idx, DATA, 16, VIRTQ_DESC_F_NEXT, loop[(k + 1) % len(loop)])
    vq.publish(loop[0])
    with pytest.raises(QueueError, match="loop"):
        q.pop()


def test_chain_as_long_as_the_queue_is_fine(mem):
    q, vq = make_queue(mem, size=8)
    head = vq.add_chain([(DATA + k, 1, False) for k in range(8)])
    [chain] = pop_all(q)
    assert chain.head == head and len(chain.buffers) == 8


@pytest.mark.parametrize("addr,length", [
    (LOW_END - 16, 32),          # runs into the hole
    (LOW_END, 1),                # in the hole
    (HIGH_END, 0),               # zero length, but not in RAM
    ((1 << 64) - 1, 2),          # wraps
    (HIGH_END - 1, 0xFFFF_FFFF), # huge
])
def test_buffer_outside_ram(mem, addr, length):
    q, vq = make_queue(mem)
    vq.add_chain([(DATA, 16, False), (addr, length, True)])
    with pytest.raises(QueueError, match="guest RAM"):
        q.pop()


def test_zero_length_buffer_in_ram_is_fine(mem):
    q, vq = make_queue(mem)
    vq.add_chain([(DATA, 0, False)])
    [chain] = pop_all(q)
    assert chain.views(mem)[0].nbytes == 0


def test_total_length_bounded(mem):
    # 1025 buffers of 4 MiB each (all overlapping the same RAM): more than 2**32-1 bytes.
    big = GuestMemory([(0, 4 * MiB)])
    try:
        q, vq = make_queue(big, size=2048, max_size=2048, base=0x1000)
        table = 0x40000
        n = MAX_CHAIN_BYTES // (4 * MiB) + 1
        vq.add_indirect([(0, 4 * MiB, False)] * n, table)
        with pytest.raises(QueueError, match="add up"):
            q.pop()
    finally:
        big.close()


# Indirect descriptors. -----------------------------------------------------
def test_indirect_chain(mem):
    q, vq = make_queue(mem)
    bufs = [(DATA, 16, False), (DATA + 0x200, 4096, True), (HIGH + 4, 1, True)]
    head = vq.add_indirect(bufs, INDIRECT_AREA)
    [chain] = pop_all(q)
    assert chain.head == head and chain.buffers == bufs


def test_direct_then_indirect(mem):
    q, vq = make_queue(mem)
    mem.write(INDIRECT_AREA, DESC.pack(DATA + 0x100, 8, VIRTQ_DESC_F_WRITE, 0))
    vq.write_desc(0, DATA, 16, VIRTQ_DESC_F_NEXT, 1)
    vq.write_desc(1, INDIRECT_AREA, 16, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    [chain] = pop_all(q)
    assert chain.buffers == [(DATA, 16, False), (DATA + 0x100, 8, True)]


def test_indirect_needs_feature(mem):
    q, vq = make_queue(mem, features=0)
    vq.add_indirect([(DATA, 16, False)], INDIRECT_AREA)
    with pytest.raises(QueueError, match="not negotiated"):
        q.pop()


def test_nested_indirect(mem):
    q, vq = make_queue(mem)
    mem.write(INDIRECT_AREA, DESC.pack(INDIRECT_AREA + 0x100, 16, VIRTQ_DESC_F_INDIRECT, 0))
    mem.write(INDIRECT_AREA + 0x100, DESC.pack(DATA, 16, 0, 0))
    vq.write_desc(0, INDIRECT_AREA, 16, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="inside an indirect"):
        q.pop()


def test_indirect_with_next(mem):
    q, vq = make_queue(mem)
    mem.write(INDIRECT_AREA, DESC.pack(DATA, 16, 0, 0))
    vq.write_desc(0, INDIRECT_AREA, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    vq.write_desc(1, DATA, 16, 0, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="both INDIRECT and NEXT"):
        q.pop()


@pytest.mark.parametrize("length", [0, 8, 17, 33])
def test_indirect_table_length(mem, length):
    q, vq = make_queue(mem)
    vq.write_desc(0, INDIRECT_AREA, length, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="multiple of 16"):
        q.pop()


def test_indirect_table_too_long(mem):
    q, vq = make_queue(mem)
    vq.write_desc(0, HIGH, 16 * (MAX_INDIRECT_ENTRIES + 1), VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="entries"):
        q.pop()


@pytest.mark.parametrize("table", [LOW_END - 16, LOW_END + 0x100, (1 << 64) - 16])
def test_indirect_table_outside_ram(mem, table):
    q, vq = make_queue(mem)
    vq.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="indirect table"):
        q.pop()


def test_indirect_next_out_of_table(mem):
    q, vq = make_queue(mem)
    mem.write(INDIRECT_AREA, DESC.pack(DATA, 16, VIRTQ_DESC_F_NEXT, 2))
    mem.write(INDIRECT_AREA + 16, DESC.pack(DATA, 16, 0, 0))
    vq.write_desc(0, INDIRECT_AREA, 32, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="next index 2"):
        q.pop()


def test_indirect_loop(mem):
    q, vq = make_queue(mem)
    mem.write(INDIRECT_AREA, DESC.pack(DATA, 16, VIRTQ_DESC_F_NEXT, 1))
    mem.write(INDIRECT_AREA + 16, DESC.pack(DATA, 16, VIRTQ_DESC_F_NEXT, 0))
    vq.write_desc(0, INDIRECT_AREA, 32, VIRTQ_DESC_F_INDIRECT, 0)
    vq.publish(0)
    with pytest.raises(QueueError, match="loop"):
        q.pop()


# Copy, then check, then act. --------------------------------------------------
def test_descriptor_read_once(mem, monkeypatch):
    """Every descriptor is unpacked exactly once per walk."""
    q, vq = make_queue(mem)
    vq.add_chain([(DATA, 16, False), (DATA + 16, 16, True)])
    calls = []
    real = struct.Struct("<QIHH")

    class Counting:
        size = real.size

        @staticmethod
        def unpack_from(buf, offset=0):
            calls.append(offset)
            return real.unpack_from(buf, offset)

    monkeypatch.setattr("kvmm.virtio.queue._DESC", Counting)
    [chain] = pop_all(q)
    assert sorted(calls) == [0, 16] and len(chain.buffers) == 2


# Notifications. ---------------------------------------------------------------
def test_no_interrupt_flag(mem):
    q, vq = make_queue(mem, features=0)
    vq.add_chain([(DATA, 1, True)])
    q.add_used(q.pop().head, 1)
    assert q.needs_notification()
    assert not q.needs_notification()          # nothing new since
    vq.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    vq.add_chain([(DATA, 1, True)])
    q.add_used(q.pop().head, 1)
    assert not q.needs_notification()


def test_used_flags_no_notify(mem):
    q, vq = make_queue(mem, features=0)
    q.disable_notification()
    assert vq.used_flags() == VIRTQ_USED_F_NO_NOTIFY
    assert q.enable_notification() is False
    assert vq.used_flags() == 0
    vq.add_chain([(DATA, 1, True)])
    assert q.enable_notification() is True     # arrived meanwhile: drain again


def test_event_idx_used_event(mem):
    q, vq = make_queue(mem, features=EVENT_IDX)
    for _ in range(4):
        vq.add_chain([(DATA, 1, True)])
    chains = pop_all(q)
    q.add_used(chains[0].head, 1)
    assert q.needs_notification()              # used_event 0 (zeroed ring): 0 -> 1 crosses it
    vq.set_used_event(2)                       # "interrupt me when used idx passes 2"
    q.add_used(chains[1].head, 1)              # used idx 2
    assert not q.needs_notification()
    q.add_used(chains[2].head, 1)              # used idx 3: crossed 2 -> 3
    assert q.needs_notification()
    vq.set_used_event(10)
    q.add_used(chains[3].head, 1)
    assert not q.needs_notification()


def test_event_idx_avail_event(mem):
    q, vq = make_queue(mem, features=EVENT_IDX)
    vq.add_chain([(DATA, 1, True)])
    vq.add_chain([(DATA, 1, True)])
    q.disable_notification()
    assert vq.used_flags() == 0                # EVENT_IDX does not use the flag
    pop_all(q)
    assert q.enable_notification() is False
    assert vq.avail_event() == 2


def test_undo_pop(mem):
    q, vq = make_queue(mem)
    head = vq.add_chain([(DATA, 16, False)])
    c = q.pop()
    q.undo_pop()
    again = q.pop()
    assert c.head == again.head == head and c.buffers == again.buffers
    assert q.pop() is None


def test_add_used_range_checks(mem):
    q, _vq = make_queue(mem, size=8)
    with pytest.raises(ValueError):
        q.add_used(8, 0)
    with pytest.raises(ValueError):
        q.add_used(0, 1 << 32)


def test_reset_forgets_everything(mem):
    q, vq = make_queue(mem)
    vq.add_chain([(DATA, 16, False)])
    pop_all(q)
    q.reset()
    assert not q.activated and q.next_avail == 0 and not q.ready and q.size == q.max_size
    with pytest.raises(QueueError):
        q.pop()


# Property tests. ----------------------------------------------------------------
REGIONS = ((0, LOW_END), (HIGH, HIGH_END))


def in_ram(addr, length):
    return any(s <= addr < e and addr + length <= e for s, e in REGIONS)


def reference_walk(mem, size, desc, head, indirect_ok):
    """The rules of virtio 1.2 §2.7 as kvmm applies them, written plainly.
    Returns the buffer list, or None where the queue must be broken."""
    if head >= size:
        return None
    table, table_len, budget, i = desc, size, size, head
    nested = False
    bufs, total = [], 0
    while True:
        if budget == 0:
            return None
        budget -= 1
        addr, length, flags, nxt = DESC.unpack(mem.read(table + 16 * i, 16))
        if flags & VIRTQ_DESC_F_INDIRECT:
            if (not indirect_ok or nested or flags & VIRTQ_DESC_F_NEXT or length == 0
                    or length % 16 or length // 16 > MAX_INDIRECT_ENTRIES
                    or not in_ram(addr, length)):
                return None
            table, table_len, budget, i, nested = addr, length // 16, length // 16, 0, True
            continue
        if not in_ram(addr, length):
            return None
        total += length
        if total > MAX_CHAIN_BYTES:
            return None
        bufs.append((addr, length, bool(flags & VIRTQ_DESC_F_WRITE)))
        if not flags & VIRTQ_DESC_F_NEXT:
            return bufs
        if nxt >= table_len:
            return None
        i = nxt


def reference_pop_all(mem, size, vq, indirect_ok):
    idx = mem.read_u16(vq.avail + 2)
    if idx > size:        # next_avail starts at 0
        return [None]
    out = []
    for k in range(idx):
        head = mem.read_u16(vq.avail + 4 + 2 * (k % size))
        bufs = reference_walk(mem, size, vq.desc, head, indirect_ok)
        out.append(bufs)
        if bufs is None:
            break
    return out


GOOD_ADDRS = st.one_of(st.integers(DATA, DATA + 0x1000), st.integers(HIGH, HIGH + 0x1000))
HOSTILE_ADDRS = st.one_of(
    st.integers(LOW_END - 64, LOW_END + 64),          # across the region end and the hole
    st.integers(HIGH_END - 64, HIGH_END + 64),
    st.sampled_from([0, (1 << 64) - 1, (1 << 64) - 16, 1 << 63]),
    st.integers(INDIRECT_AREA, INDIRECT_AREA + 0x200),
)
GOOD_LENGTHS = st.integers(0, 4096)
HOSTILE_LENGTHS = st.one_of(st.sampled_from([16, 32, 48, 0xFFFF_FFFF, 0x8000_0000]),
                            st.integers(0, 0xFFFF_FFFF))
GOOD_FLAGS = st.sampled_from([0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
                              VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE])
HOSTILE_FLAGS = st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))


def descriptor(table_size):
    """Mostly plausible descriptors, some hostile in one or more fields, some
    pointing at an indirect table."""
    plain = st.tuples(
        st.one_of(GOOD_ADDRS, GOOD_ADDRS, GOOD_ADDRS, HOSTILE_ADDRS),
        st.one_of(GOOD_LENGTHS, GOOD_LENGTHS, HOSTILE_LENGTHS),
        st.one_of(GOOD_FLAGS, GOOD_FLAGS, GOOD_FLAGS, HOSTILE_FLAGS),
        st.one_of(st.integers(0, table_size - 1), st.integers(0, table_size - 1),
                  st.integers(0, 0xFFFF)))
    to_table = st.builds(
        lambda k, n, extra, nxt: (INDIRECT_AREA + 16 * k, 16 * n, VIRTQ_DESC_F_INDIRECT | extra,
                                  nxt),
        st.integers(0, 8), st.integers(0, 6),
        st.sampled_from([0, 0, 0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE]),
        st.integers(0, table_size))
    return st.one_of(plain, plain, plain, to_table)


@st.composite
def hostile_ring(draw):
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    descs = draw(st.lists(descriptor(size), min_size=size, max_size=size))
    indirect = draw(st.lists(descriptor(8), min_size=16, max_size=16))
    avail_idx = draw(st.one_of(st.integers(0, size), st.integers(0, size),
                               st.integers(0, 0xFFFF)))
    heads = draw(st.lists(st.one_of(st.integers(0, size - 1), st.integers(0, size - 1),
                                    st.integers(0, 0xFFFF)),
                          min_size=size, max_size=size))
    indirect_ok = draw(st.booleans())
    return size, descs, indirect, avail_idx, heads, indirect_ok


def load_hostile_ring(mem, ring):
    """A queue over the drawn ring, and what the reference walker takes from it."""
    size, descs, indirect, avail_idx, heads, indirect_ok = ring
    q, vq = make_queue(mem, size=size, features=INDIRECT if indirect_ok else 0)
    for i, d in enumerate(descs):
        vq.write_desc(i, *d)
    for i, d in enumerate(indirect):
        mem.write(INDIRECT_AREA + 16 * i, DESC.pack(*d))
    for slot, head in enumerate(heads):
        vq.set_avail_entry(slot, head)
    vq.set_avail_idx(avail_idx)
    return q, reference_pop_all(mem, size, vq, indirect_ok)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_ring())
def test_hostile_rings_match_reference(mem, ring):
    q, expected = load_hostile_ring(mem, ring)
    got = []
    try:
        while (chain := q.pop()) is not None:
            got.append(chain.buffers)
            # Every buffer handed out maps to real guest RAM, whole.
            views = chain.views(mem)
            assert [v.nbytes for v in views] == [n for _a, n, _w in chain.buffers]
            assert chain.total_len == sum(n for _a, n, _w in chain.buffers)
    except QueueError:
        got.append(None)
    assert got == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_ring(), st.integers(1, 40), st.booleans())
def test_pop_plain_then_pop_match_reference(mem, ring, limit, writable):
    """A device taking batches of one-buffer chains with pop_plain, and every
    other chain with pop, gets exactly what the reference walker accepts, in
    order, and the same failure."""
    q, expected = load_hostile_ring(mem, ring)
    got = []
    try:
        while True:
            batch = q.pop_plain(limit, writable)
            assert len(batch) <= limit
            for _head, addr, view in batch:
                assert bytes(view) == mem.read(addr, len(view))    # the buffer itself
                got.append([(addr, len(view), writable)])
            if batch:
                continue
            chain = q.pop()
            if chain is None:
                break
            got.append(chain.buffers)
    except QueueError:
        got.append(None)
    assert got == expected


def test_pop_plain_stops_before_other_shapes(mem):
    q, vq = make_queue(mem)
    a = vq.add_chain([(DATA, 64, False)])
    b = vq.add_chain([(DATA + 0x100, 64, False)])
    c = vq.add_chain([(DATA + 0x200, 16, False), (DATA + 0x300, 16, False)])
    d = vq.add_chain([(DATA + 0x400, 64, True)])
    assert [(h, addr, len(v)) for h, addr, v in q.pop_plain(8, False)] == \
        [(a, DATA, 64), (b, DATA + 0x100, 64)]
    assert q.pop_plain(8, False) == []             # c has two descriptors: pop() takes it
    assert q.pop().head == c
    assert q.pop_plain(8, False) == []             # d is device-writable
    assert [h for h, _a, _v in q.pop_plain(8, True)] == [d]
    assert q.pop_plain(8, True) == [] and q.pop() is None


@pytest.mark.parametrize("addr, length", [(LOW_END - 16, 32), (LOW_END, 16), (HIGH_END - 8, 9),
                                          ((1 << 64) - 16, 32)])
def test_pop_plain_leaves_a_buffer_outside_ram_to_pop(mem, addr, length):
    q, vq = make_queue(mem)
    good = vq.add_chain([(DATA, 64, True)])
    vq.add_chain([(addr, length, True)])
    assert [h for h, _a, _v in q.pop_plain(8, True)] == [good]
    assert q.pop_plain(8, True) == []
    with pytest.raises(QueueError, match="not inside one region"):
        q.pop()


def test_pop_plain_limit_and_undo(mem):
    q, vq = make_queue(mem)
    heads = [vq.add_chain([(DATA + 0x100 * k, 32, True)]) for k in range(5)]
    first = q.pop_plain(3, True)
    assert [h for h, _a, _v in first] == heads[:3]
    q.undo_pop(2)
    assert [h for h, _a, _v in q.pop_plain(8, True)] == heads[1:]


def test_add_used_many_publishes_once(mem):
    q, vq = make_queue(mem)
    heads = [vq.add_chain([(DATA + 0x100 * k, 32, True)]) for k in range(3)]
    for _ in heads:
        q.pop()
    q.add_used_many([(heads[2], 7), (heads[0], 0), (heads[1], 32)])
    assert vq.used_idx() == 3
    assert vq.get_used() == [(heads[2], 7), (heads[0], 0), (heads[1], 32)]
    q.add_used_many([])
    assert vq.used_idx() == 3
    with pytest.raises(ValueError):
        q.add_used_many([(8, 0)])
    with pytest.raises(ValueError):
        q.add_used_many([(0, 1 << 32)])


@st.composite
def good_chains(draw):
    size = draw(st.sampled_from([4, 8, 16, 32]))
    chains = []
    used = 0
    for _ in range(draw(st.integers(1, size))):
        n = draw(st.integers(1, 6))
        use_indirect = draw(st.booleans())
        cost = 1 if use_indirect else n
        if used + cost > size:
            break
        used += cost
        bufs = []
        for _ in range(n):
            region = draw(st.sampled_from(REGIONS))
            length = draw(st.integers(0, 8192))
            addr = draw(st.integers(max(region[0], DATA if region[0] == 0 else region[0]),
                                    region[1] - length - 1))
            bufs.append((addr, length, draw(st.booleans())))
        chains.append((bufs, use_indirect))
    order = draw(st.permutations(range(size)))
    return size, chains, order


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(good_chains(), st.booleans())
def test_good_chains_parsed_exactly(mem, spec, event_idx):
    size, chains, order = spec
    assume(chains)
    q, vq = make_queue(mem, size=size, features=INDIRECT | (EVENT_IDX if event_idx else 0))
    vq.free = list(order)            # descriptors in a scrambled order
    table = INDIRECT_AREA
    heads = []
    for bufs, use_indirect in chains:
        if use_indirect:
            heads.append(vq.add_indirect(bufs, table))
            table += 16 * len(bufs)
        else:
            heads.append(vq.add_chain(bufs))
    got = pop_all(q)
    assert [c.head for c in got] == heads
    assert [c.buffers for c in got] == [bufs for bufs, _ in chains]
    for c in reversed(got):
        q.add_used(c.head, c.total_len & 0xFFFF)
    assert vq.get_used() == [(c.head, c.total_len & 0xFFFF) for c in reversed(got)]


MUTATIONS = st.lists(st.tuples(
    st.sampled_from(["addr", "len", "flags", "next", "iaddr", "ilen", "iflags", "inext",
                     "head", "idx"]),
    st.integers(0, 63),
    st.one_of(st.integers(0, 16), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF_FFFF),
              st.sampled_from([LOW_END - 8, HIGH_END - 8, (1 << 64) - 8, INDIRECT_AREA]))),
    min_size=1, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(good_chains(), MUTATIONS)
def test_corrupted_good_rings_match_reference(mem, spec, mutations):
    """A well-formed ring with one to three fields overwritten by a hostile driver."""
    size, chains, order = spec
    assume(chains)
    q, vq = make_queue(mem, size=size, features=INDIRECT)
    vq.free = list(order)
    table = INDIRECT_AREA
    for bufs, use_indirect in chains:
        if use_indirect:
            vq.add_indirect(bufs, table)
            table += 16 * len(bufs)
        else:
            vq.add_chain(bufs)
    fields = {"addr": (0, "<Q"), "len": (8, "<I"), "flags": (12, "<H"), "next": (14, "<H")}
    for kind, index, value in mutations:
        if kind == "head":
            vq.set_avail_entry(index % size, value & 0xFFFF)
        elif kind == "idx":
            vq.set_avail_idx(value)
        else:
            indirect = kind.startswith("i")
            off, fmt = fields[kind[1:] if indirect else kind]
            base = INDIRECT_AREA if indirect else vq.desc
            count = 32 if indirect else size
            value &= (1 << (8 * struct.calcsize(fmt))) - 1
            mem.write(base + 16 * (index % count) + off, struct.pack(fmt, value))
    expected = reference_pop_all(mem, size, vq, True)
    got = []
    try:
        while (chain := q.pop()) is not None:
            got.append(chain.buffers)
            chain.views(mem)
    except QueueError:
        got.append(None)
    assert got == expected
