"""Firecracker-style metrics: the mapping, the delta convention, and the writer
against real files, a real FIFO and a real EventLoop."""
import errno
import json
import os
import threading
import time

import pytest

from kvmm.api.metrics import MetricsWriter, firecracker_metrics
from kvmm.eventloop import EventLoop
from tests.unit.pipes import drain


def _blk(reads=0, writes=0, read_bytes=0, write_bytes=0, flushes=0, throttled=0,
         notifications=0, errors=0):
    return {"queue_errors": 0, "bad_accesses": 0, "notifications": notifications,
            "resets": 0, "activations": 1, "reads": reads, "writes": writes,
            "read_bytes": read_bytes, "write_bytes": write_bytes, "flushes": flushes,
            "discards": 0, "write_zeroes": 0, "get_ids": 0, "errors": errors,
            "unsupported": 0, "throttled": throttled}


def _net(rx_frames=0, rx_bytes=0, tx_frames=0, tx_bytes=0, rx_throttled=0, tx_throttled=0):
    return {"queue_errors": 0, "bad_accesses": 0, "notifications": 3, "resets": 0,
            "activations": 1, "rx_frames": rx_frames, "rx_bytes": rx_bytes,
            "tx_frames": tx_frames, "tx_bytes": tx_bytes, "rx_dropped": 0, "tx_dropped": 0,
            "rx_deferred": 0, "rx_throttled": rx_throttled, "tx_throttled": tx_throttled,
            "tx_yields": 0, "rx_bad_chains": 0, "tx_bad_chains": 0, "rx_errors": 0,
            "tx_errors": 0}


def _stats(blk0=None, blk1=None, net=None, exits=None, limiter_throttled=0):
    return {
        "devices": {"virtio-blk:rootfs": blk0 or _blk(), "virtio-blk:data": blk1 or _blk(),
                    "virtio-net:eth0": net or _net()},
        "limits": {"drive:rootfs": {"bytes": 100, "ops": 2,
                                    "throttled_count": limiter_throttled,
                                    "throttled_ms": 1.5, "bandwidth": None,
                                    "ops_bucket": None}},
        "memory": {"guest_ram": 128 << 20, "monitor_rss": 50 << 20},
        "exits": exits if exits is not None else {"vcpu0": 10},
        "cpu": {"seconds": 1.0, "wall": 2.0, "affinity": {"vcpu0": [0]}},
    }


def test_first_line_carries_totals_under_firecracker_names():
    before = time.time() * 1000
    m = firecracker_metrics(_stats(blk0=_blk(reads=5, read_bytes=2560, flushes=1,
                                             throttled=2, notifications=7),
                                   net=_net(rx_frames=4, rx_bytes=400, tx_frames=3,
                                            tx_bytes=300, tx_throttled=1)), None)
    assert before - 1 <= m["utc_timestamp_ms"] <= time.time() * 1000 + 1
    assert m["block_rootfs"] == {"read_count": 5, "write_count": 0, "read_bytes": 2560,
                                 "write_bytes": 0, "flush_count": 1, "queue_event_count": 7,
                                 "rate_limiter_throttled_events": 2}
    assert m["net_eth0"]["rx_packets_count"] == 4
    assert m["net_eth0"]["rx_bytes_count"] == 400
    assert m["net_eth0"]["tx_packets_count"] == 3
    assert m["net_eth0"]["tx_bytes_count"] == 300
    assert m["net_eth0"]["tx_rate_limiter_throttled"] == 1
    assert m["net_eth0"]["rx_rate_limiter_throttled"] == 0
    assert m["kvmm"]["memory"]["guest_ram"] == 128 << 20
    json.dumps(m)                       # serialisable as one line


def test_counters_are_changes_since_the_previous_line():
    first = _stats(blk0=_blk(reads=5, write_bytes=4096), limiter_throttled=1)
    second = _stats(blk0=_blk(reads=8, write_bytes=4096), limiter_throttled=4)
    m = firecracker_metrics(second, first)
    assert m["block_rootfs"]["read_count"] == 3
    assert m["block_rootfs"]["write_bytes"] == 0
    assert m["kvmm"]["devices"]["virtio-blk:rootfs"]["reads"] == 3
    assert m["kvmm"]["limits"]["drive:rootfs"]["throttled_count"] == 3
    assert m["kvmm"]["limits"]["drive:rootfs"]["bytes"] == 0
    assert m["kvmm"]["exits"]["vcpu0"] == 0
    # gauges are not differenced
    assert m["kvmm"]["memory"]["monitor_rss"] == 50 << 20
    assert m["kvmm"]["cpu"]["seconds"] == 1.0


def test_aggregate_block_and_net_are_sums_of_the_devices():
    m = firecracker_metrics(_stats(blk0=_blk(reads=2, write_bytes=512),
                                   blk1=_blk(reads=3, write_bytes=1024)), None)
    assert m["block"]["read_count"] == 5
    assert m["block"]["write_bytes"] == 1536
    assert m["net"]["rx_bytes_count"] == 0


def test_a_counter_that_went_backwards_counts_from_zero():
    m = firecracker_metrics(_stats(blk0=_blk(reads=2)), _stats(blk0=_blk(reads=9)))
    assert m["block_rootfs"]["read_count"] == 2


def test_vcpu_exit_kinds_map_when_counted_by_kind():
    exits = {"vcpu0": {"io_in": 1, "io_out": 2, "mmio_read": 3, "mmio_write": 4},
             "vcpu1": {"io_in": 10, "io_out": 0, "mmio_read": 0, "mmio_write": 1}}
    m = firecracker_metrics(_stats(exits=exits), None)
    assert m["vcpu"] == {"exit_io_in": 11, "exit_io_out": 2, "exit_mmio_read": 3,
                         "exit_mmio_write": 5}
    m = firecracker_metrics(_stats(exits={"vcpu0": 99}), None)
    assert m["vcpu"]["exit_io_in"] == 0
    assert m["kvmm"]["exits"] == {"vcpu0": 99}


class _Counter:
    """A stats source whose reads grow by one per call."""

    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.n += 1
            return _stats(blk0=_blk(reads=self.n))


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_flush_appends_a_line_to_a_regular_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("")                 # flintlock creates the file beforehand
    loop = EventLoop("test-metrics")
    source = _Counter()
    with MetricsWriter(str(path), loop, source) as w:
        assert w.flush() and w.flush()
    lines = _lines(path)
    assert [ln["block_rootfs"]["read_count"] for ln in lines] == [1, 1]
    assert lines[0]["logger"]["missed_metrics_count"] == 0
    loop.close()


def test_missing_file_is_created_and_a_bad_directory_is_explained(tmp_path):
    loop = EventLoop("test-metrics")
    w = MetricsWriter(str(tmp_path / "new.metrics"), loop, _Counter())
    w.flush()
    w.close()
    assert len(_lines(tmp_path / "new.metrics")) == 1
    with pytest.raises(OSError, match="metrics_path"):
        MetricsWriter(str(tmp_path / "nodir" / "m"), loop, _Counter())
    with pytest.raises(ValueError, match="interval"):
        MetricsWriter(str(tmp_path / "m2"), loop, _Counter(), interval=0)
    loop.close()


def test_periodic_lines_on_a_real_event_loop(tmp_path):
    path = tmp_path / "periodic.json"
    loop = EventLoop("test-metrics")
    loop.start()
    w = MetricsWriter(str(path), loop, _Counter(), interval=0.05)
    w.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and w.lines_written < 3:
        time.sleep(0.01)
    w.close()
    written = w.lines_written
    time.sleep(0.15)                    # no line after close
    loop.close()
    lines = _lines(path)
    assert written >= 3 and len(lines) == written
    assert all(ln["block_rootfs"]["read_count"] == 1 for ln in lines)


def test_fifo_full_drops_lines_without_blocking_and_counts_them(tmp_path):
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    loop = EventLoop("test-metrics")
    big = {"devices": {f"virtio-blk:d{i}": _blk(reads=i) for i in range(40)}}
    w = MetricsWriter(str(fifo), loop, lambda: big)
    results = []
    start = time.monotonic()
    for _ in range(200):                # far more than a pipe buffer holds
        results.append(w.flush())
    assert time.monotonic() - start < 5
    assert results[0] and not results[-1]
    assert w.missed == results.count(False) > 0
    # The reader sees only whole lines, then the count of the dropped ones.
    data = drain(reader)
    lines = data.decode().splitlines()
    assert all(json.loads(line)["utc_timestamp_ms"] for line in lines)
    assert w.flush()                    # room again
    tail = os.read(reader, 1 << 20).decode()
    # a partly written line is finished first, then the new one follows
    last = json.loads(tail.splitlines()[-1])
    assert last["logger"]["missed_metrics_count"] == w.missed
    w.close()
    os.close(reader)
    loop.close()


def test_fifo_without_a_reader_is_not_an_error(tmp_path):
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    loop = EventLoop("test-metrics")
    w = MetricsWriter(str(fifo), loop, _Counter())
    assert not w.flush() and w.missed == 1
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    assert w.flush()
    line = json.loads(os.read(reader, 1 << 16).decode())
    assert line["logger"]["missed_metrics_count"] == 1
    assert line["block_rootfs"]["read_count"] == 2      # the dropped line's read too
    w.close()
    os.close(reader)
    loop.close()


def test_flush_after_close_writes_nothing(tmp_path):
    loop = EventLoop("test-metrics")
    w = MetricsWriter(str(tmp_path / "m"), loop, _Counter())
    w.close()
    w.close()
    assert not w.flush()
    assert (tmp_path / "m").read_text() == ""
    loop.close()


def test_open_errors_keep_their_errno(tmp_path):
    loop = EventLoop("test-metrics")
    with pytest.raises(OSError) as e:
        MetricsWriter(str(tmp_path / "missing" / "m"), loop, _Counter())
    assert e.value.errno == errno.ENOENT
    loop.close()
