"""Firecracker-style metrics: one JSON object per line, to a file or a FIFO.

`firecracker_metrics` turns kvmm's stats (`Machine.stats()`) into the object
Firecracker writes (src/vmm/src/logger/metrics.rs), under Firecracker's key
names where a kvmm counter means the same thing:

    block_<drive_id> / block      read_count, write_count, read_bytes,
                                  write_bytes, flush_count, queue_event_count,
                                  rate_limiter_throttled_events
    net_<iface_id> / net          rx_bytes_count, rx_packets_count,
                                  tx_bytes_count, tx_packets_count,
                                  rx_rate_limiter_throttled,
                                  tx_rate_limiter_throttled, rx_fails, tx_fails
    vcpu                          exit_io_in, exit_io_out, exit_mmio_read,
                                  exit_mmio_write (when the run loop counts
                                  exits by kind)

A Firecracker counter is written as the change since the previous line (its
`SharedIncMetric` is reset by each write); `block` and `net` are the sums of
the per-device changes. The writer counts from the last line that was
written, so the changes of a dropped line arrive with the next one. kvmm's
own figures go under `kvmm`, counters again as changes, gauges (memory, CPU
time, bucket state) as they are. Counters kvmm does not keep are left out
rather than written as zeros.

`MetricsWriter` writes a line every `interval` seconds on the guest's event
loop and on demand (the FlushMetrics action). The destination is opened
non-blocking: a reader that does not keep up costs a dropped line (counted in
`logger.missed_metrics_count`), never a stalled I/O thread.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from typing import Callable

# Firecracker's metrics period (src/firecracker/src/metrics.rs,
# WRITE_METRICS_PERIOD_MS).
DEFAULT_INTERVAL_S = 60.0

BLOCK_PREFIX = "virtio-blk:"     # transport names, kvmm/virtio/{blk,net}/device.py
NET_PREFIX = "virtio-net:"

# kvmm counter -> Firecracker BlockDeviceMetrics field
# (src/vmm/src/devices/virtio/block/virtio/metrics.rs).
BLOCK_KEYS = {
    "reads": "read_count",
    "writes": "write_count",
    "read_bytes": "read_bytes",
    "write_bytes": "write_bytes",
    "flushes": "flush_count",
    "notifications": "queue_event_count",
    "throttled": "rate_limiter_throttled_events",
}

# kvmm counter -> Firecracker NetDeviceMetrics field
# (src/vmm/src/devices/virtio/net/metrics.rs).
NET_KEYS = {
    "rx_bytes": "rx_bytes_count",
    "rx_frames": "rx_packets_count",
    "tx_bytes": "tx_bytes_count",
    "tx_frames": "tx_packets_count",
    "rx_throttled": "rx_rate_limiter_throttled",
    "tx_throttled": "tx_rate_limiter_throttled",
    "rx_errors": "rx_fails",
    "tx_errors": "tx_fails",
}

# exit kind counted by the run loop -> Firecracker VcpuMetrics field.
VCPU_KEYS = {
    "io_in": "exit_io_in",
    "io_out": "exit_io_out",
    "mmio_read": "exit_mmio_read",
    "mmio_write": "exit_mmio_write",
}

# Rate limiter figures that are counters; the rest of a limiter's stats
# (bucket sizes and budgets) are gauges (kvmm/quota/bucket.py `stats`).
LIMITER_COUNTERS = ("bytes", "ops", "throttled_count", "throttled_ms")


def firecracker_metrics(stats: dict, previous: dict | None) -> dict:
    """One Firecracker metrics object from `stats` (as `Machine.stats()` returns
    it); counters are the change since `previous` (the stats of the line before;
    None for the first line, which then carries the totals so far)."""
    previous = previous or {}
    out: dict = {"utc_timestamp_ms": time.time_ns() // 1_000_000}

    devices = stats.get("devices", {})
    prev_devices = previous.get("devices", {})
    block_total = dict.fromkeys(BLOCK_KEYS.values(), 0)
    net_total = dict.fromkeys(NET_KEYS.values(), 0)
    per_block: dict = {}
    per_net: dict = {}
    for name, counters in sorted(devices.items()):
        before = prev_devices.get(name, {})
        if name.startswith(BLOCK_PREFIX):
            entry = _mapped(counters, before, BLOCK_KEYS)
            per_block[f"block_{name[len(BLOCK_PREFIX):]}"] = entry
            _add(block_total, entry)
        elif name.startswith(NET_PREFIX):
            entry = _mapped(counters, before, NET_KEYS)
            per_net[f"net_{name[len(NET_PREFIX):]}"] = entry
            _add(net_total, entry)
    out.update(per_block)
    out["block"] = block_total
    out.update(per_net)
    out["net"] = net_total

    vcpu = dict.fromkeys(VCPU_KEYS.values(), 0)
    prev_exits = previous.get("exits", {})
    for name, exits in stats.get("exits", {}).items():
        if isinstance(exits, dict):
            _add(vcpu, _mapped(exits, prev_exits.get(name, {}), VCPU_KEYS))
    out["vcpu"] = vcpu

    out["kvmm"] = _kvmm_section(stats, previous)
    return out


def _delta(now, before):
    """Change of a counter; a counter that went backwards was reset (a device
    re-activated), so its whole value is new."""
    if not isinstance(before, (int, float)) or before > now:
        return now
    return now - before


def _mapped(counters: dict, before: dict, keys: dict[str, str]) -> dict:
    return {fc: _delta(counters[kvmm], before.get(kvmm, 0))
            for kvmm, fc in keys.items() if kvmm in counters}


def _add(total: dict, entry: dict) -> None:
    for key, value in entry.items():
        total[key] = total.get(key, 0) + value


def _counter_tree(now, before):
    """Every number in `now` as a change since `before`, recursively."""
    if isinstance(now, dict):
        before = before if isinstance(before, dict) else {}
        return {k: _counter_tree(v, before.get(k)) for k, v in now.items()}
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        return _delta(now, before)
    return now


def _kvmm_section(stats: dict, previous: dict) -> dict:
    section: dict = {}
    if "devices" in stats:
        section["devices"] = _counter_tree(stats["devices"], previous.get("devices"))
    if "exits" in stats:
        section["exits"] = _counter_tree(stats["exits"], previous.get("exits"))
    if "limits" in stats:
        prev_limits = previous.get("limits", {})
        limits = {}
        for target, figures in stats["limits"].items():
            before = prev_limits.get(target, {})
            entry = dict(figures)
            for key in LIMITER_COUNTERS:
                if key in figures:
                    entry[key] = _delta(figures[key], before.get(key, 0))
            limits[target] = entry
        section["limits"] = limits
    for gauge in ("memory", "cpu"):
        if gauge in stats:
            section[gauge] = stats[gauge]
    return section


class MetricsWriter:
    """Writes `firecracker_metrics(stats_fn(), ...)` as JSON lines to `path`.

    `path` is a regular file (appended to, created if missing) or a FIFO. A FIFO
    with no reader yet is not an error: the writer opens it again before each
    line and counts the line as missed until a reader appears. `flush()` may be
    called from any thread; the periodic timer runs on `loop`.
    """

    def __init__(self, path: str, loop, stats_fn: Callable[[], dict],
                 interval: float = DEFAULT_INTERVAL_S):
        if not interval > 0:
            raise ValueError(f"interval: must be a positive number of seconds, not {interval!r}")
        self.path = path
        self.loop = loop
        self.stats_fn = stats_fn
        self.interval = interval
        self.lines_written = 0
        self.missed = 0                  # lines dropped: a full or readerless FIFO
        self._missed_reported = 0
        self._previous: dict | None = None
        self._pending = b""              # rest of a line a pipe took only part of
        self._lock = threading.Lock()
        self._timer = None
        self._closed = False
        self._fd: int | None = None
        self._open()

    # The destination. --------------------------------------------------------
    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_APPEND
        try:
            self._fd = os.open(self.path, flags | os.O_CREAT, 0o600)
        except OSError as e:
            if e.errno == errno.ENXIO:   # a FIFO nobody reads yet
                self._fd = None
                return
            raise OSError(e.errno, f"metrics_path {self.path}: cannot open for writing: "
                                   f"{e.strerror}; give an existing file, a FIFO, or a "
                                   f"path in a writable directory") from None
        mode = os.fstat(self._fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            os.close(self._fd)
            self._fd = None
            raise OSError(errno.EINVAL, f"metrics_path {self.path}: not a file or a FIFO")

    def _write(self, data: bytes) -> bool:
        """Write all of `data` or nothing new; True if it went out whole."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                                   | os.O_APPEND)
            except OSError:
                return False
        if self._pending:
            self._pending = self._pending[self._send(self._pending):]
            if self._pending:
                return False
        sent = self._send(data)
        if sent == 0:
            return False
        self._pending = data[sent:]      # finished before the next line
        return True

    def _send(self, data: bytes) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except BrokenPipeError:          # the reader went away; reopen next time
            os.close(self._fd)
            self._fd = None
            self._pending = b""
            return 0

    # Lines. --------------------------------------------------------------------
    def flush(self) -> bool:
        """Write one line now (Firecracker's FlushMetrics). True if it was written;
        False if it was dropped because the destination could not take it."""
        stats = self.stats_fn()
        with self._lock:
            if self._closed:
                return False
            line = firecracker_metrics(stats, self._previous)
            line["logger"] = {"missed_metrics_count": self.missed - self._missed_reported}
            data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
            if self._write(data):
                # Counters restart from a line the reader got. Firecracker
                # restarts them from a dropped line too, losing its changes;
                # here they reach the next line written.
                self._previous = stats
                self._missed_reported = self.missed
                self.lines_written += 1
                return True
            self.missed += 1
            return False

    def start(self) -> None:
        """Write a line every `interval` seconds on the event loop."""
        self.loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if not self._closed:
            self._timer = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        if self._closed:
            return
        self.flush()
        self._arm()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
