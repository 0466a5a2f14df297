"""The lane's own helpers (ci/lane/lane.py): the initramfs writer, vmlinux
extraction, the command it runs in L1 and how it reads the verdict. Fast; no
network, no QEMU."""
import gzip
import importlib.util
import lzma
import os
import shlex
import shutil
import subprocess

import pytest

from tests.unit.test_bzimage import make_bzimage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("lane", os.path.join(REPO, "ci", "lane", "lane.py"))
lane = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lane)


def test_cpio_newc_is_readable_by_busybox(tmp_path):
    c = lane.Cpio()
    c.dir("bin")
    c.file("bin/hello", b"hello world\n", 0o755)
    c.symlink("bin/sh", "hello")
    c.chardev("console", 5, 1)
    data = c.bytes()
    assert data[:6] == b"070701" and data.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(data) % 4 == 0
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    r = subprocess.run([busybox, "cpio", "-t"], input=data, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["bin", "bin/hello", "bin/sh", "console"]
    r = subprocess.run([busybox, "cpio", "-id"], input=data, cwd=tmp_path, capture_output=True)
    assert (tmp_path / "bin" / "hello").read_bytes() == b"hello world\n"
    assert os.readlink(tmp_path / "bin" / "sh") == "hello"


def _with_payload(payload: bytes) -> bytes:
    kernel = bytearray(0x2000)
    kernel[0x100:0x100 + len(payload)] = payload
    return make_bzimage(kernel=bytes(kernel), payload_offset=0x100,
                        payload_length=len(payload))


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_extract_vmlinux(compress):
    elf = b"\x7fELF" + bytes(range(200))
    assert lane.extract_vmlinux(_with_payload(compress(elf))) == elf


def test_extract_vmlinux_unknown_payload():
    assert lane.extract_vmlinux(_with_payload(b"\x00" * 64)) is None


def test_lane_command_quotes_and_options():
    runs = [lane.L2Run("bzImage", "/c/vmlinuz", disk=True),
            lane.L2Run("vmlinux", "/c/vmlinux", disk=False)]
    cmd = lane.lane_command("/r/.venv/bin/python", runs, "/c/l2 initrd.cpio", net=True,
                            l2_timeout=300)
    parts = cmd.split("; ")
    assert parts[0].startswith("truncate -s ")
    assert parts[2] == 'echo "LANE-L1 run bzImage exit=$?"'
    assert parts[4] == 'echo "LANE-L1 run vmlinux exit=$?"'
    argv = shlex.split(parts[1])
    assert argv[:4] == ["/r/.venv/bin/python", "-m", "kvmm", "boot-test"]
    assert argv[argv.index("--kernel") + 1] == "/c/vmlinuz"
    assert argv[argv.index("--initrd") + 1] == "/c/l2 initrd.cpio"
    assert argv[argv.index("--hide-cpuid") + 1] == "xsave"      # QEMU 7.2 XSETBV bug
    assert "--wait-exit" in argv and "--require-kvm" in argv
    cmdline = argv[argv.index("--cmdline") + 1].split()
    assert "lane.disk=1" in cmdline and "lane.net=1" in cmdline and "lane.cpus=2" in cmdline
    assert argv[argv.index("--drive") + 1] == "path=/dev/shm/lane-disk.img"
    assert argv[argv.index("--net") + 1] == "tap=lane0"
    argv2 = shlex.split(parts[3])
    assert argv2[argv2.index("--kernel") + 1] == "/c/vmlinux" and "--drive" not in argv2


RUNS = [lane.L2Run("bzImage", "k", disk=True), lane.L2Run("vmlinux", "v", disk=False)]
GOOD = """LANE-L1 up
LANE-L2 CHECK cpus PASS want=2 have=2 online=0-1
LANE-L2 CHECK kvm-clock PASS kvm-clock
LANE-L2 CHECK virtio-blk-found PASS 131072 sectors
LANE-L2 CHECK read-back PASS sha256 abc
LANE-L2 RESULT PASS
kvmm boot-test: PASS: matched 'LANE-L2 RESULT PASS' after 10.8 s; the guest powered off
LANE-L1 run bzImage exit=0
LANE-L2 CHECK cpus PASS want=2 have=2 online=0-1
LANE-L2 RESULT PASS
kvmm boot-test: PASS: matched 'LANE-L2 RESULT PASS' after 12.1 s; the guest powered off
LANE-L1 run vmlinux exit=0
LANE-L1 done""".splitlines()


def test_verdict():
    assert lane.verdict(GOOD, RUNS) == (True, [])
    no_read = [ln for ln in GOOD if "read-back" not in ln]
    ok, problems = lane.verdict(no_read, RUNS)
    assert not ok and any("read-back" in p for p in problems)
    assert lane.verdict(no_read, [lane.L2Run("bzImage", "k", disk=False), RUNS[1]])[0]
    bad = [ln.replace("cpus PASS", "cpus FAIL", 1) for ln in GOOD]
    assert not lane.verdict(bad, RUNS)[0]
    failed = [ln.replace("vmlinux exit=0", "vmlinux exit=1") for ln in GOOD]
    ok, problems = lane.verdict(failed, RUNS)
    assert not ok and any("vmlinux failed" in p for p in problems)
    unfinished = [ln for ln in GOOD if "run vmlinux" not in ln]
    assert not lane.verdict(unfinished, RUNS)[0]


def test_l2_init_is_valid_shell():
    for script in ("l1-init.sh", "l2-init.sh"):
        path = os.path.join(REPO, "ci", "lane", script)
        r = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
