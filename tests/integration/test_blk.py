"""virtio-blk end to end: the guest kernel's block modes against real image files."""
import hashlib
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import REPO, kvmm

pytestmark = pytest.mark.kvm

M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & M64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & M64
    return x ^ (x >> 31)


def pattern_sector(seed: int, sector: int) -> bytes:
    """guest-kernel/src/pattern.h: word i of sector s."""
    base = seed * 0x9E3779B97F4A7C15 + sector * 64
    return struct.pack("<64Q", *(mix64((base + i) & M64) for i in range(64)))


def image(tmp_path, name: str, size: int, fill: bytes = b"") -> str:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
        if fill:
            f.write(fill)
    return str(path)


def digest(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("size", [512 * 1024, 8 << 20, (33 << 20) + 512])
def test_blktest_on_fresh_images(guest_kernel, tmp_path, size):
    img = image(tmp_path, "d.img", size)
    r = kvmm("run", "--mem", "128M", "--drive", f"path={img},serial=SN-{size}",
             "--cmdline", "mode=blktest", "--timeout", "120", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS" and v["disks"] == "1"
    assert int(v["bytes"]) == size and int(v["sectors0"]) == size // 512
    assert v["serial0"] == f"SN-{size}"
    # the image now holds the pattern (seed 0 = disk index), except where the
    # guest checked write-zeroes/discard; the last sector is pattern data
    last = size // 512 - 1
    with open(img, "rb") as f:
        f.seek(last * 512)
        assert f.read(512) == pattern_sector(0, last)


def test_two_drives_at_once(guest_kernel, tmp_path):
    a = image(tmp_path, "a.img", 4 << 20)
    b = image(tmp_path, "b.img", 6 << 20)
    r = kvmm("run", "--drive", f"path={a},id=first,serial=AAA", "--drive",
             f"path={b},id=second,serial=BBB", "--cmdline", "mode=blktest", "--timeout", "120",
             check_status=0)
    v = r.verdict()
    assert v["disks"] == "2" and v["serial0"] == "AAA" and v["serial1"] == "BBB"
    with open(b, "rb") as f:
        assert f.read(512) == pattern_sector(1, 0)


def test_read_only_drive_refuses_writes_and_keeps_the_image(guest_kernel, tmp_path):
    img = image(tmp_path, "ro.img", 2 << 20, fill=b"keep me" * 1000)
    before = digest(img)
    r = kvmm("run", "--drive", f"path={img},ro", "--cmdline", "mode=blktest",
             "--timeout", "60", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS" and "ro" in v["checks0"], v
    assert digest(img) == before


def test_hostile_guest_leaves_the_monitor_alive(guest_kernel, tmp_path):
    img = image(tmp_path, "h.img", 1 << 20)
    r = kvmm("run", "--drive", f"path={img}", "--cmdline", "mode=hostile-blk",
             "--timeout", "120", check_status=0)
    v = r.verdict()
    assert v["result"] == "PASS"
    assert int(v["cases"]) >= 10
    # each case was either answered with an error or reset the device; the
    # monitor logged them at a bounded rate
    assert int(v["reset"]) + int(v["errors"]) >= int(v["cases"]) - int(v.get("skipped", 0))


def test_flushed_writes_survive_a_killed_monitor(guest_kernel, tmp_path):
    img = image(tmp_path, "dur.img", 4 << 20)
    sectors, seed = 4096, 77
    proc = subprocess.Popen([sys.executable, "-m", "kvmm", "run", "--drive", f"path={img}",
                             "--cmdline", f"mode=blkwrite seed={seed} sectors={sectors}",
                             "--timeout", "60"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while b"FLUSHED" not in out:
            left = deadline - time.monotonic()
            assert left > 0, f"no FLUSHED line: {out!r}"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"kvmm ended before the flush: {out!r} {proc.stderr.read()!r}"
                out += chunk
        os.kill(proc.pid, signal.SIGKILL)           # right after the acknowledgement
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert f"FLUSHED seed={seed} sectors={sectors}".encode() in out
    with open(img, "rb") as f:
        data = f.read(sectors * 512)
    for s in range(sectors):
        assert data[s * 512:(s + 1) * 512] == pattern_sector(seed, s), f"sector {s} lost"


def one_line_error(r, needle):
    assert r.status == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r


def test_bad_drives(tmp_path):
    ok = image(tmp_path, "ok.img", 1 << 20)
    odd = image(tmp_path, "odd.img", 1000)
    one_line_error(kvmm("run", "--drive", f"path={tmp_path}/missing.img"), "does not exist")
    one_line_error(kvmm("run", "--drive", f"path={tmp_path}"), "directory")
    one_line_error(kvmm("run", "--drive", f"path={odd}"), "512")
    one_line_error(kvmm("run", "--drive", f"path={ok}", "--drive", f"path={ok}"), "same")
    one_line_error(kvmm("run", "--drive", "path="), "path")
    one_line_error(kvmm("run", "--drive", f"path={ok},bogus=1"), "bogus")
    ro = image(tmp_path, "ro.img", 1 << 20)
    os.chmod(ro, 0o444)
    one_line_error(kvmm("run", "--drive", f"path={ro}"), "ro")
    unreadable = image(tmp_path, "unreadable.img", 1 << 20)
    os.chmod(unreadable, 0o000)
    one_line_error(kvmm("run", "--drive", f"path={unreadable}"), "cannot be read")


def test_image_in_use_by_another_monitor(guest_kernel, tmp_path):
    import fcntl
    img = image(tmp_path, "busy.img", 1 << 20)
    with open(img, "rb+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        one_line_error(kvmm("run", "--drive", f"path={img}"), "locked")


@pytest.mark.parametrize("mode", ["blkbench poll=1 qd=4 pattern=rand seconds=1",
                                  "blkbench poll=1 qd=1 seconds=1",
                                  "blkmulti qd=2 seconds=1"])
def test_polling_driver_sees_consistent_rings(guest_kernel, tmp_path, mode):
    """A driver that polls the used ring while the device works must never see
    a torn or transient used index (it would complete requests twice), and
    must never miss a notification (it would time out)."""
    a = image(tmp_path, "a.img", 16 << 20, fill=os.urandom(1 << 20))
    b = image(tmp_path, "b.img", 16 << 20)
    for _ in range(3):
        r = kvmm("run", "--mem", "128M", "--drive", f"path={a}", "--drive", f"path={b}",
                 "--cmdline", f"mode={mode}", "--timeout", "60", check_status=0)
        assert r.verdict()["result"] == "PASS"
