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
    runs = [lane.L2Run("bzImage", "/c/vmlinuz", disk=True, net=True),
            lane.L2Run("vmlinux", "/c/vmlinux", disk=False, net=True)]
    cmd = lane.lane_command("/r/.venv/bin/python", runs, "/c/l2 initrd.cpio", l2_timeout=300,
                            modes=["hello", "netecho"], net=True, mode_timeout=90)
    parts = cmd.split("; ")
    assert parts[0].startswith("truncate -s ")
    assert parts[2] == 'echo "LANE-L1 run bzImage exit=$?"'
    assert parts[4] == 'echo "LANE-L1 run vmlinux exit=$?"'
    assert parts[6] == 'echo "LANE-L1 run guest-modes exit=$?"'
    argv = shlex.split(parts[1])
    assert argv[:4] == ["/r/.venv/bin/python", "-m", "kvmm", "boot-test"]
    assert argv[argv.index("--kernel") + 1] == "/c/vmlinuz"
    assert argv[argv.index("--initrd") + 1] == "/c/l2 initrd.cpio"
    assert argv[argv.index("--hide-cpuid") + 1] == "xsave"      # QEMU 7.2 XSETBV bug
    assert argv[argv.index("--timeout") + 1] == "300"
    assert "--wait-exit" in argv and "--require-kvm" in argv
    cmdline = argv[argv.index("--cmdline") + 1].split()
    assert "lane.disk=1" in cmdline and "lane.net=1" in cmdline and "lane.cpus=2" in cmdline
    assert f"lane.ip={lane.GUEST_ADDR}" in cmdline and "lane.peer=10.0.2.1" in cmdline
    assert argv[argv.index("--drive") + 1] == "path=/dev/shm/lane-disk.img"
    assert argv[argv.index("--net") + 1] == f"tap=lane0,mac={lane.GUEST_MAC}"
    argv2 = shlex.split(parts[3])
    assert argv2[argv2.index("--kernel") + 1] == "/c/vmlinux" and "--drive" not in argv2
    modes = shlex.split(parts[5])
    assert modes[:3] == ["/r/.venv/bin/python", "-I", os.path.join(REPO, "ci", "lane",
                                                                    "guest_modes.py")]
    assert modes[modes.index("--kernel") + 1] == lane.GUEST_KERNEL
    assert modes[modes.index("--tap") + 1] == "lane0"
    assert modes[modes.index("--timeout") + 1] == "90"
    assert modes[-2:] == ["hello", "netecho"]


def test_lane_command_without_net_or_modes():
    runs = [lane.L2Run("bzImage", "/c/vmlinuz", disk=False, net=False)]
    cmd = lane.lane_command("py", runs, "i", l2_timeout=300)
    parts = cmd.split("; ")
    assert len(parts) == 2
    argv = shlex.split(parts[0])
    assert "--net" not in argv and "--drive" not in argv
    assert "lane.net=1" not in argv[argv.index("--cmdline") + 1]


RUNS = [lane.L2Run("bzImage", "k", disk=True, net=True),
        lane.L2Run("vmlinux", "v", disk=False, net=True)]
MODES = ["hello", "netecho"]
L2_COMMON = ["cpus PASS want=2 have=2 online=0-1", "hypervisor PASS hypervisor",
             "kvm-clock PASS kvm-clock", "virtio-net-found PASS eth0 lo",
             "virtio-net-up PASS mac 02:00:0a:00:02:02", "net-addr PASS 10.0.2.2/24",
             "ping PASS 10.0.2.1: 3/3 replies"]
L2_DISK = ["virtio-blk-found PASS 131072 sectors", "mkfs PASS ext2", "mount PASS",
           "write PASS 1 MiB file", "umount PASS", "remount PASS", "read-back PASS sha256 abc"]
GOOD = (["LANE-L1 up", "LANE-L1 tap: lane0 10.0.2.1/24"]
        + [f"LANE-L2 CHECK {c}" for c in L2_COMMON + L2_DISK]
        + ["LANE-L2 RESULT PASS",
           "kvmm boot-test: PASS: matched 'LANE-L2 RESULT PASS' after 10.8 s; the guest "
           "powered off", "LANE-L1 run bzImage exit=0"]
        + [f"LANE-L2 CHECK {c}" for c in L2_COMMON]
        + ["LANE-L2 RESULT PASS",
           "kvmm boot-test: PASS: matched 'LANE-L2 RESULT PASS' after 12.1 s; the guest "
           "powered off", "LANE-L1 run vmlinux exit=0",
           "LANE-GK MODE hello PASS 5.6 s world=kvm cpus=1",
           "LANE-GK MODE netecho PASS 4.7 s datagrams=32",
           "LANE-GK RESULT PASS", "LANE-L1 run guest-modes exit=0", "LANE-L1 done"])


def test_verdict():
    assert lane.verdict(GOOD, RUNS, MODES) == (True, [])
    no_read = [ln for ln in GOOD if "read-back" not in ln]
    ok, problems = lane.verdict(no_read, RUNS, MODES)
    assert not ok and problems == ["bzImage: L2 check read-back did not pass"]
    nodisk = [lane.L2Run("bzImage", "k", disk=False, net=True), RUNS[1]]
    assert lane.verdict(no_read, nodisk, MODES)[0]
    bad = [ln.replace("cpus PASS", "cpus FAIL", 1) for ln in GOOD]
    ok, problems = lane.verdict(bad, RUNS, MODES)
    assert not ok and any(p.startswith("bzImage: L2 check failed: cpus") for p in problems)
    failed = [ln.replace("vmlinux exit=0", "vmlinux exit=1") for ln in GOOD]
    ok, problems = lane.verdict(failed, RUNS, MODES)
    assert not ok and any("vmlinux run failed" in p for p in problems)
    unfinished = [ln for ln in GOOD if "run vmlinux" not in ln]
    ok, problems = lane.verdict(unfinished, RUNS, MODES)
    assert not ok and "the vmlinux run did not finish" in problems


def test_verdict_checks_are_per_boot():
    """A check that passed in one boot does not cover the other."""
    second = GOOD.index("LANE-L1 run bzImage exit=0") + 1
    lines = GOOD[:second] + [ln for ln in GOOD[second:] if " ping PASS" not in ln]
    ok, problems = lane.verdict(lines, RUNS, MODES)
    assert not ok and problems == ["vmlinux: L2 check ping did not pass"]
    no_net = [lane.L2Run("bzImage", "k", disk=True, net=False),
              lane.L2Run("vmlinux", "v", disk=False, net=False)]
    assert lane.verdict(lines, no_net, MODES)[0]


def test_verdict_guest_modes():
    failed = [ln.replace("netecho PASS 4.7 s", "netecho FAIL 9.0 s no echo")
              .replace("LANE-GK RESULT PASS", "LANE-GK RESULT FAIL netecho")
              .replace("guest-modes exit=0", "guest-modes exit=1") for ln in GOOD]
    ok, problems = lane.verdict(failed, RUNS, MODES)
    assert not ok
    assert "guest kernel mode netecho: FAIL 9.0 s no echo datagrams=32" in problems
    assert "the guest-modes run failed (exit=1; see above)" in problems
    missing = [ln for ln in GOOD if "MODE hello" not in ln]
    ok, problems = lane.verdict(missing, RUNS, MODES)
    assert problems == ["guest kernel modes without a result: hello"]
    assert lane.verdict(GOOD, RUNS, ["hello", "netecho", "smp"])[0] is False
    # a hang: the lane killed QEMU in the middle of the modes
    cut = GOOD[:GOOD.index("LANE-GK MODE netecho PASS 4.7 s datagrams=32")]
    ok, problems = lane.verdict(cut, RUNS, MODES)
    assert problems == ["the guest-modes run did not finish",
                        "guest kernel modes without a result: netecho"]


def test_verdict_hang_in_a_boot_is_reported_once():
    cut = GOOD[:GOOD.index("LANE-L1 run bzImage exit=0") + 3]    # into the vmlinux boot
    cut = [ln.replace("cpus PASS", "cpus FAIL") if i > len(cut) - 3 else ln
           for i, ln in enumerate(cut)]
    ok, problems = lane.verdict(cut, RUNS, MODES)
    assert problems == ["the vmlinux run did not finish", "the guest-modes run did not finish",
                        "vmlinux: L2 check failed: cpus FAIL want=2 have=2 online=0-1",
                        "guest kernel modes without a result: hello, netecho"]


def test_l2_init_is_valid_shell():
    for script in ("l1-init.sh", "l2-init.sh", "l2-bench-init.sh"):
        path = os.path.join(REPO, "ci", "lane", script)
        r = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_l1_stall_is_l1s_kernel_only():
    assert lane.l1_stall("[   51.472585] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
    assert lane.l1_stall("[  120.000001] watchdog: BUG: soft lockup - CPU#1 stuck for 22s!")
    # L2 boots with printk.time=0: its reports have no time and are not L1's
    assert not lane.l1_stall("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
    assert not lane.l1_stall("[    9.4] kvm [128]: vcpu0, guest rIP: 0xffff Unhandled WRMSR")
    runs = [lane.L2Run("bzImage", "k", disk=False, net=False)]
    argv = shlex.split(lane.lane_command("py", runs, "i", l2_timeout=300).split("; ")[0])
    assert "printk.time=0" in argv[argv.index("--cmdline") + 1].split()


def fake_qemu(tmp_path, monkeypatch, script: str) -> None:
    """A `qemu-system-x86_64` first on PATH that runs `script` (sh)."""
    path = tmp_path / "qemu-system-x86_64"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")


def test_a_silent_l1_counts_as_a_stall(tmp_path, monkeypatch, capsysbinary):
    fake_qemu(tmp_path, monkeypatch, "echo 'LANE-L2 init: some' ; sleep 60\n")
    monkeypatch.setattr(lane, "SILENCE_LIMIT", 1.0)
    status, lines, seconds, stopped = lane.run_qemu("vmlinuz", "initrd", 30,
                                                    str(tmp_path / "log"), 2)
    assert stopped is not None and stopped.startswith("stall: L1's console silent"), stopped
    assert lines == ["LANE-L2 init: some"] and seconds < 10
    assert status != 0                                   # killed


def test_a_talking_l1_is_not_stopped(tmp_path, monkeypatch, capsysbinary):
    fake_qemu(tmp_path, monkeypatch, "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done\n")
    monkeypatch.setattr(lane, "SILENCE_LIMIT", 1.0)
    status, lines, _seconds, stopped = lane.run_qemu("vmlinuz", "initrd", 30,
                                                     str(tmp_path / "log"), 2)
    assert (status, stopped) == (0, None) and lines[-1] == "tick 4"
