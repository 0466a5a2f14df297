"""blk: virtio-blk throughput and IOPS, measured by the guest (`mode=blkbench`),
with the same raw image file on the same file system under both monitors.

Figures: sequential 1 MiB read and write (MB/s), 4 KiB random read IOPS at
queue depth 1 and 16 (targets kvmm/QEMU >= 0.9 and >= 0.7), and the
monitor's host CPU seconds per GiB moved (user + system time of the whole
process, from wait4, over the bytes the guest reports).
"""
from __future__ import annotations

import os
import tempfile

from bench.common import Guest, Setup, alternate, figure, median, note

IMAGE_SIZE = 256 << 20
DEFAULT_RUNS = 3
GiB = 1 << 30

# (figure name, blkbench parameters, verdict key, unit)
CASES = (
    ("blk.seq_read_1M", (("op", "read"), ("pattern", "seq"), ("bs", 1 << 20), ("qd", 4)),
     "mbps", "MB/s"),
    ("blk.seq_write_1M", (("op", "write"), ("pattern", "seq"), ("bs", 1 << 20), ("qd", 4)),
     "mbps", "MB/s"),
    ("blk.rand_read_4K_qd1", (("op", "read"), ("pattern", "rand"), ("bs", 4096), ("qd", 1)),
     "iops", "IOPS"),
    ("blk.rand_read_4K_qd16", (("op", "read"), ("pattern", "rand"), ("bs", 4096), ("qd", 16)),
     "iops", "IOPS"),
)


def _image(directory: str) -> str:
    """A raw image filled with data (reads of a sparse file would not touch
    the page cache the way a used disk does)."""
    path = os.path.join(directory, "bench-blk.img")
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(IMAGE_SIZE // len(chunk)):
            f.write(chunk)
    return path


def run(setup: Setup):
    runs = setup.runs_or(DEFAULT_RUNS)
    with tempfile.TemporaryDirectory(prefix="kvmm-bench-", dir="/var/tmp") as tmp:
        image = _image(tmp)
        note(f"image {image}: {IMAGE_SIZE >> 20} MiB on the same file system for both")
        for name, params, key, unit in CASES:
            guest = Guest("blkbench", params + (("seconds", 2),), mem="256M", drives=(image,))
            results = alternate(setup, guest, runs)
            value = {m: median(r.verdict.number(key) for r in rs) for m, rs in results.items()}
            yield figure(name, value["kvmm"], value["qemu"], unit)
            cpu = {m: median(r.process.cpu_seconds / max(r.verdict.number("bytes"), 1) * GiB
                             for r in rs) for m, rs in results.items()}
            yield figure(f"{name}.cpu_s_per_GiB", cpu["kvmm"], cpu["qemu"], "s/GiB")
