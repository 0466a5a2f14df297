#!/usr/bin/env python3
"""The hardware-KVM lane: kvmm boots a stock Debian kernel under a real
(hardware-style) KVM.

    L0  this machine: QEMU, TCG, `-cpu max` (an emulated AMD CPU with SVM/NPT)
    L1  Debian's generic kernel (linux-image-<abi>-amd64) with kvm_amd loaded;
        the host's root is shared read-only over virtio-9p and the repository's
        own kvmm runs from it in a chroot (ci/lane/l1-init.sh)
    L2  Debian's cloud kernel (linux-image-<abi>-cloud-amd64, unmodified, a
        bzImage, then the vmlinux inside it) booted by `kvmm boot-test` with 2
        vCPUs, a busybox initramfs with the virtio modules of the same package,
        a virtio-blk disk and a virtio-net NIC on a TAP in L1 (10.0.2.1/24 in
        L1, 10.0.2.2/24 in L2); ci/lane/l2-init.sh checks CPUs, kvm-clock, the
        disk (mkfs, write, read back), pings L1 across the TAP and powers off
        through ACPI S5, which must end kvmm
    and in L1 too, the project's guest kernel under kvmm in its hardware-KVM
        form (ci/lane/guest_modes.py: hello with world=kvm, smp, timer, mem,
        exception, reset, blktest, netecho, hostile-net)
    and last kvmm's cgroup tests on L1's pure cgroup v2 hierarchy (L1 boots
        with cgroup_no_v1=all; ci/lane/cgroup_v2.py runs
        tests/lane/l1_cgroup_v2.py and the memory-limit test of
        tests/integration/test_quota.py there)

Everything comes from Debian packages (`apt-get install` / `apt-get download`),
cached under $KVMM_LANE_CACHE (default /var/cache/kvmm-lane, or
~/.cache/kvmm-lane when not root). Output: the L1 console, streamed, then one
"lane: PASS|FAIL ..." line; exit status 0 or 1 (2 for a set-up problem).

    ci/lane/run            the whole lane (this file's `run`)
    ci/lane/fetch          only download and unpack the kernels, and write the
                           test images the unit tests use (bzImage, vmlinux)
    lane.py exec CMD       boot L1 and run CMD there (debugging; bench/linux.py
                           uses the same machinery through `Lane`)
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import gzip
import lzma
import os
import re
import select
import shutil
import stat
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GUEST_KERNEL = os.path.join(REPO, "guest-kernel", "build", "kvmm-guest.elf")
APT_PACKAGES = ("qemu-system-x86", "busybox-static")
FETCH_PACKAGES = ("lz4",)            # to unpack the cloud kernel's LZ4 payload (vmlinux)
L1_FLAVOUR = "amd64"                 # has 9p and virtio-pci as modules
L2_FLAVOUR = "cloud-amd64"           # the stock kernel under test
# Load order matters: there is no modules.dep in an unpacked package.
L1_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
              "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p",
              "irqbypass", "ccp", "kvm", "kvm-amd", "tun")
L2_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "failover",
              "net_failover", "virtio_net")
L2_VCPUS = 2
L2_MEM = "512M"
L1_MEM = "2G"
DISK_SIZE = 64 << 20
# Networking inside L1: a persistent TAP that L1's /init makes and addresses; every
# guest (L2 Linux and the guest-kernel modes) gets the same address and MAC, so L1's
# neighbour entry stays right from one guest to the next.
LANE_TAP = "lane0"
TAP_ADDR = "10.0.2.1/24"            # L1's end
GUEST_ADDR = "10.0.2.2/24"          # the guest's end (eth0 in L2)
GUEST_MAC = "02:00:0a:00:02:02"     # locally administered
PING_COUNT = 3
DEFAULT_TIMEOUT = 360               # one L1 run of the lane, seconds (it takes 45-115 s)
L2_TIMEOUT = 120                    # kvmm boot-test inside L1 (a boot takes 9-20 s there)
# The project's guest kernel in L1 (ci/lane/guest_modes.py): these modes, and the
# network ones when L2 has a NIC. Each kvmm run is bounded by MODE_TIMEOUT.
GUEST_MODES = ("hello", "smp", "timer", "mem", "exception", "reset", "blktest")
CGROUP_RUN = "cgroup-v2"            # the run of ci/lane/cgroup_v2.py (about 16 s in L1)
GUEST_NET_MODES = ("netecho", "hostile-net")
MODE_TIMEOUT = 120
CONSOLE_TAIL = 40
# L1's kernel reporting a CPU that stopped taking interrupts: seen now and then
# under QEMU 7.2's TCG (docs/linux-guests.md); the lane stops L1 then instead of
# waiting for its timeout, and runs again (--stall-retries).
L1_STALL_PATTERNS = ("rcu: INFO: rcu_preempt detected stalls",
                     "rcu: INFO: rcu_preempt self-detected stall",
                     "rcu: INFO: rcu_sched detected stalls",
                     "watchdog: BUG: soft lockup", "NMI watchdog: Watchdog detected hard LOCKUP")
STALL_GRACE = 10.0                  # seconds of console after the stall report
# A stuck L1 may not even get its stall report out: a console silent for longer
# than any step inside L1 may be (kvmm's own timeouts print when they fire)
# counts as a stall too.
SILENCE_LIMIT = 150.0
STALL_RETRIES = 2
FAILURE_RETRIES = 1                 # a run that finished and failed is run once more
MAX_RUNS = 3                        # L1 runs in all: three fit tests/lane's 900 s
LOCK_WAIT = 900                     # seconds to wait for another run of the same kind


def log(msg: str, stream=None) -> None:
    """A lane message; `stream` is a binary stream (default stdout)."""
    out = sys.stdout.buffer if stream is None else stream
    out.write(f"lane: {msg}\n".encode())
    out.flush()


class LaneError(Exception):
    """A set-up problem (exit 2)."""


def cache_dir() -> str:
    env = os.environ.get("KVMM_LANE_CACHE")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/cache/kvmm-lane"
    return os.path.join(os.path.expanduser("~"), ".cache", "kvmm-lane")


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


# Packages. ---------------------------------------------------------------------
_apt_updated = False


def apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        log("apt-get update")
        r = sh(*_sudo(), "apt-get", "update", "-qq")
        if r.returncode:
            log(f"apt-get update failed (using what is cached): {r.stderr.strip()[-300:]}")
        _apt_updated = True


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def ensure_packages(packages) -> None:
    missing = [p for p in packages
               if "install ok installed" not in sh("dpkg-query", "-W", "-f=${Status}", p).stdout]
    if not missing:
        return
    apt_update()
    log(f"apt-get install {' '.join(missing)}")
    r = sh(*_sudo(), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode:
        raise LaneError(f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()[-500:]}")


def kernel_abi(cache: str) -> str:
    """The ABI ("6.1.0-56") of Debian's current cloud kernel, or $KVMM_LANE_KERNEL."""
    env = os.environ.get("KVMM_LANE_KERNEL")
    if env:
        return env
    for attempt in range(2):
        r = sh("apt-cache", "depends", f"linux-image-{L2_FLAVOUR}")
        m = re.search(rf"linux-image-(\S+)-{L2_FLAVOUR}\b", r.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            apt_update()
    cached = sorted(glob.glob(os.path.join(cache, "extract", f"linux-image-*-{L2_FLAVOUR}")))
    if cached:
        return os.path.basename(cached[-1])[len("linux-image-"):-len(L2_FLAVOUR) - 1]
    raise LaneError("cannot tell which Debian kernel to use: apt-cache knows no "
                    f"linux-image-{L2_FLAVOUR} and nothing is cached; set KVMM_LANE_KERNEL")


def fetch_kernel(cache: str, abi: str, flavour: str) -> str:
    """Download and unpack linux-image-<abi>-<flavour>; the unpacked tree."""
    pkg = f"linux-image-{abi}-{flavour}"
    tree = os.path.join(cache, "extract", pkg)
    if os.path.isdir(tree):
        return tree
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    found = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
    if not found:
        log(f"apt-get download {pkg}")
        r = sh("apt-get", "download", pkg, cwd=debs)
        found = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
        if r.returncode and not found:
            apt_update()
            r = sh("apt-get", "download", pkg, cwd=debs)
            found = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
        if not found:
            raise LaneError(f"apt-get download {pkg} failed: {r.stderr.strip()[-500:]}")
    tmp = tree + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(tree), exist_ok=True)
    r = sh("dpkg-deb", "-x", sorted(found)[-1], tmp)
    if r.returncode:
        raise LaneError(f"dpkg-deb -x {found[-1]} failed: {r.stderr.strip()}")
    os.rename(tmp, tree)
    return tree


def kernel_files(tree: str) -> tuple[str, str, str]:
    """(vmlinuz, config, lib/modules/<release>) of an unpacked kernel package."""
    vmlinuz = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
    config = glob.glob(os.path.join(tree, "boot", "config-*"))
    moddir = glob.glob(os.path.join(tree, "lib", "modules", "*"))
    if not (vmlinuz and config and moddir):
        raise LaneError(f"{tree}: not an unpacked linux-image package")
    return vmlinuz[0], config[0], moddir[0]


def find_module(moddir: str, name: str) -> str:
    for pattern in (f"{name}.ko", f"{name.replace('-', '_')}.ko", f"{name.replace('_', '-')}.ko"):
        hits = glob.glob(os.path.join(moddir, "kernel", "**", pattern), recursive=True)
        if hits:
            return hits[0]
    raise LaneError(f"module {name} is not in {moddir} (built in? check boot/config-*)")


# Initramfs (cpio "newc", Documentation/driver-api/early-userspace/buffer-format.rst). ---
class Cpio:
    def __init__(self):
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        hdr = b"070701" + b"".join(b"%08X" % v for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0))
        self.ino += 1
        pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
        self.parts += [hdr, name_b, pad(len(hdr) + len(name_b)), data, pad(len(data))]

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def base_initramfs(init_script: str) -> Cpio:
    busybox = shutil.which("busybox") or "/bin/busybox"
    with open(busybox, "rb") as f:
        bb = f.read()
    if b"GLIBC_" in bb[:4096] or not _is_static(busybox):
        raise LaneError(f"{busybox} is not statically linked: install busybox-static")
    c = Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
              "lib", "lib/modules", "mnt", "host", "etc"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)      # init's stdout before devtmpfs is mounted
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", bb, 0o755)
    c.symlink("bin/sh", "busybox")
    with open(os.path.join(HERE, init_script), "rb") as f:
        c.file("init", f.read(), 0o755)
    return c


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return not any(struct.unpack_from("<I", table, i * phentsize)[0] == 3   # PT_INTERP
                   for i in range(phnum))


def add_modules(c: Cpio, moddir: str, names) -> None:
    for name in names:
        with open(find_module(moddir, name), "rb") as f:
            c.file(f"lib/modules/{name}.ko", f.read())


def write_file(path: str, data: bytes) -> str:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def shell_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


# Test images for the unit tests (the fixture step). ------------------------------
def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF vmlinux inside a bzImage, as scripts/extract-vmlinux finds it: the
    compressed payload (payload_offset/payload_length, boot protocol 2.08+),
    decompressed by its magic. None if the compressor is not available here."""
    setup_sects = bzimage[0x1F1] or 4
    pm = (setup_sects + 1) * 512
    off, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[pm + off:pm + off + length]
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(payload)
    tools = {
        b"\x02\x21\x4c\x18": ("lz4", "-dc"),              # LZ4 legacy frame (Debian cloud)
        b"\x28\xb5\x2f\xfd": ("zstd", "-dcq"),
        b"\x89LZO": ("lzop", "-dc"),
        b"BZh": ("bzip2", "-dc"),
        b"\x5d\x00\x00": ("xz", "-dc", "--format=lzma"),
    }
    for magic, cmd in tools.items():
        if payload.startswith(magic) and shutil.which(cmd[0]):
            r = subprocess.run(cmd, input=payload, capture_output=True)
            # lz4's legacy frames may be followed by padding it reports as an error.
            if r.stdout[:4] == b"\x7fELF":
                return r.stdout
    return None


def fetch_images(cache: str) -> dict:
    ensure_packages(FETCH_PACKAGES)
    abi = kernel_abi(cache)
    tree = fetch_kernel(cache, abi, L2_FLAVOUR)
    vmlinuz, config, _ = kernel_files(tree)
    images = os.path.join(cache, "images")
    os.makedirs(images, exist_ok=True)
    out = {"bzImage": os.path.join(images, "bzImage"),
           "vmlinux": os.path.join(images, "vmlinux"),
           "config": os.path.join(images, "config")}
    version = f"linux-image-{abi}-{L2_FLAVOUR}\n"
    version_file = os.path.join(images, "VERSION")
    current = ""
    if os.path.exists(version_file):
        with open(version_file) as f:
            current = f.read()
    if current != version or not os.path.exists(out["bzImage"]):
        for path in out.values():          # another kernel: nothing of the old one stays
            if os.path.exists(path):
                os.unlink(path)
        with open(vmlinuz, "rb") as f:
            write_file(out["bzImage"], f.read())
        shutil.copyfile(config, out["config"])
        write_file(version_file, version.encode())
    if not os.path.exists(out["vmlinux"]):
        with open(out["bzImage"], "rb") as f:
            elf = extract_vmlinux(f.read())
        if elf is None:
            log("could not extract vmlinux from the bzImage (no decompressor for its payload)")
        else:
            write_file(out["vmlinux"], elf)
    return out


# The lane. -----------------------------------------------------------------------
def build_l2(cache: str, abi: str, work: str, init_script: str = "l2-init.sh",
             name: str = "l2-initramfs.cpio", modules=L2_MODULES) -> tuple[str, str]:
    """(bzImage, initramfs) of L2: Debian's cloud kernel and a busybox initramfs
    with `init_script` as /init and `modules` (the virtio set) from the same
    package."""
    tree = fetch_kernel(cache, abi, L2_FLAVOUR)
    vmlinuz, config, moddir = kernel_files(tree)
    with open(config) as f:
        cfg = f.read()
    for opt in ("CONFIG_ACPI=y", "CONFIG_VIRTIO_MMIO=m", "CONFIG_VIRTIO_BLK=m",
                "CONFIG_VIRTIO_NET=m"):
        if opt not in cfg:
            raise LaneError(f"{config}: expected {opt}")
    c = base_initramfs(init_script)
    add_modules(c, moddir, modules)
    return vmlinuz, write_file(os.path.join(work, name), c.bytes())


def build_l1(cache: str, abi: str, work: str, lane_cmd: str, name: str = "l1-initramfs.cpio",
             tap: bool = True) -> tuple[str, str]:
    """(kernel, initramfs) of L1, whose /init runs `lane_cmd` in the host's root.
    With `tap`, L1 first makes the persistent TAP LANE_TAP with the address
    TAP_ADDR (L1 has no other NIC: the traffic stays inside it)."""
    tree = fetch_kernel(cache, abi, L1_FLAVOUR)
    vmlinuz, _, moddir = kernel_files(tree)
    c = base_initramfs("l1-init.sh")
    add_modules(c, moddir, L1_MODULES)
    env = (f"LANE_REPO={shell_quote(REPO)}\n"
           f"LANE_MODULES={shell_quote(' '.join(L1_MODULES))}\n"
           f"LANE_TAP={shell_quote(LANE_TAP if tap else '')}\n"
           f"LANE_TAP_ADDR={shell_quote(TAP_ADDR)}\n"
           f"LANE_CMD={shell_quote(lane_cmd)}\n")
    c.file("lane.env", env.encode())
    return vmlinuz, write_file(os.path.join(work, name), c.bytes())


def kvmm_supports_drives(python: str) -> bool:
    r = sh(python, "-m", "kvmm", "boot-test", "--help", cwd=REPO)
    return "--drive" in r.stdout


class L2Run:
    """One kvmm boot of the stock kernel inside L1."""
    def __init__(self, name: str, kernel: str, disk: bool, net: bool = False):
        self.name = name          # "bzImage" or "vmlinux"
        self.kernel = kernel
        self.disk = disk          # a virtio-blk disk: mkfs, write, read back
        self.net = net            # a virtio-net NIC on LANE_TAP: address, ping L1

    def wanted_checks(self) -> list[str]:
        """The l2-init.sh checks that must pass in this boot."""
        names = ["cpus", "hypervisor", "kvm-clock"]
        if self.disk:
            names += ["virtio-blk-found", "mkfs", "mount", "write", "umount", "remount",
                      "read-back"]
        if self.net:
            names += ["virtio-net-found", "virtio-net-up", "net-addr", "ping"]
        return names


def boot_test_command(python: str, run: L2Run, initrd: str, l2_timeout: int,
                      verbose: bool = False, keep_xsave: bool = False) -> str:
    # printk.time=0: L2's kernel lines carry no times, L1's do (see l1_stall)
    cmdline = ["console=ttyS0", "reboot=k", "panic=-1", "pci=off", "8250.nr_uarts=1",
               "printk.time=0", "rdinit=/init", f"lane.cpus={L2_VCPUS}",
               f"lane.kind={run.name}"]
    if not verbose:
        cmdline += ["quiet", "loglevel=4"]    # each console byte is two exits to kvmm
    args = [python, "-m", "kvmm", "boot-test", "--kernel", run.kernel, "--initrd", initrd,
            "--vcpus", str(L2_VCPUS), "--mem", L2_MEM,
            "--success", "LANE-L2 RESULT PASS", "--failure", "LANE-L2 RESULT FAIL",
            "--failure", "Kernel panic", "--wait-exit", "--timeout", str(l2_timeout),
            "--require-kvm", "--name", f"debian-cloud-{run.name}"]
    if not keep_xsave:
        args += ["--hide-cpuid", "xsave"]     # QEMU 7.2's TCG ignores the XSETBV intercept
    if run.disk:
        args += ["--drive", "path=/dev/shm/lane-disk.img"]
        cmdline.append("lane.disk=1")
    if run.net:
        # L1's TAP (made and addressed by l1-init.sh); eth0 gets GUEST_ADDR and
        # pings L1's end.
        args += ["--net", f"tap={LANE_TAP},mac={GUEST_MAC}"]
        cmdline += ["lane.net=1", f"lane.ip={GUEST_ADDR}",
                    f"lane.peer={TAP_ADDR.split('/')[0]}", f"lane.pings={PING_COUNT}"]
    args += ["--cmdline", " ".join(cmdline)]
    return " ".join(shell_quote(a) for a in args)


def guest_modes_command(python: str, modes, net: bool, timeout: int) -> str:
    """ci/lane/guest_modes.py in L1: the project's guest kernel, one kvmm run per mode."""
    args = [python, "-I", os.path.join(HERE, "guest_modes.py"), "--python", python,
            "--kernel", GUEST_KERNEL, "--repo", REPO, "--timeout", str(timeout)]
    if net:
        args += ["--tap", LANE_TAP, "--ip", GUEST_ADDR, "--peer", TAP_ADDR.split("/")[0],
                 "--mac", GUEST_MAC]
    args += list(modes)
    return " ".join(shell_quote(a) for a in args)


def cgroup_command(python: str) -> str:
    """ci/lane/cgroup_v2.py in L1: kvmm's cgroup tests on a pure v2 hierarchy."""
    return " ".join(shell_quote(a) for a in (python, os.path.join(HERE, "cgroup_v2.py"),
                                             "--repo", REPO))


def lane_command(python: str, runs: list[L2Run], initrd: str, l2_timeout: int,
                 verbose: bool = False, keep_xsave: bool = False, modes=(),
                 net: bool = False, mode_timeout: int = 0, cgroup: bool = False) -> str:
    """The shell command L1 runs in the host's root: each boot, then a marker
    line `LANE-L1 run NAME exit=STATUS`; then the guest-kernel modes (marker
    name `guest-modes`); then, with `cgroup`, the cgroup v2 tests (CGROUP_RUN)."""
    parts = []
    if any(r.disk for r in runs):
        parts.append(f"truncate -s {DISK_SIZE} /dev/shm/lane-disk.img")
    for run in runs:
        parts.append(boot_test_command(python, run, initrd, l2_timeout, verbose, keep_xsave))
        parts.append(f'echo "LANE-L1 run {run.name} exit=$?"')
    if modes:
        parts.append(guest_modes_command(python, modes, net, mode_timeout))
        parts.append('echo "LANE-L1 run guest-modes exit=$?"')
    if cgroup:
        parts.append(cgroup_command(python))
        parts.append(f'echo "LANE-L1 run {CGROUP_RUN} exit=$?"')
    return "; ".join(parts)


_L1_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


def l1_stall(line: str) -> bool:
    """A line of L1's own kernel saying one of its CPUs stopped (RCU stall, soft
    lockup): QEMU's TCG under L1 has lost a CPU, and L1 will at best crawl on.
    L1's kernel lines carry printk times; L2's do not (the lane boots L2 with
    printk.time=0), so a stall inside L2 is not taken for one of L1."""
    return bool(_L1_KERNEL_LINE.match(line)) and any(p in line for p in L1_STALL_PATTERNS)


def run_qemu(vmlinuz: str, initrd: str, timeout: float, logpath: str, smp: int,
             echo=None, extra_append: str = "", tcg_thread: str = "multi") -> tuple:
    """Boot L1 and collect its console lines until QEMU exits, `timeout`
    seconds pass, L1's kernel reports a stalled CPU (then STALL_GRACE seconds
    more, for its report), or its console stays silent for SILENCE_LIMIT
    seconds; QEMU is killed in the last three cases. The
    console is streamed to `echo` (a binary stream; default stdout) as it comes
    and kept in `logpath`. Returns (status, lines, seconds, stopped): stopped is
    None, "timeout" or "stall: <L1's line>"."""
    out = sys.stdout.buffer if echo is None else echo
    # cgroup_no_v1=all: L1's cgroups are v2 only (ci/lane/l1-init.sh mounts them)
    append = ("console=ttyS0 rdinit=/init panic=-1 mitigations=off quiet loglevel=4 "
              "cgroup_no_v1=all")
    cmd = ["qemu-system-x86_64", "-accel", f"tcg,thread={tcg_thread}", "-cpu", "max", "-M", "q35",
           "-m", L1_MEM, "-smp", str(smp), "-nodefaults", "-display", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", f"{append} {extra_append}".strip(),
           "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
           "multidevs=remap"]
    log("L1: " + " ".join(cmd), out)
    start = time.monotonic()
    lines: list[str] = []
    partial = b""
    stopped = None
    deadline = start + timeout
    last_output = start
    with open(logpath, "wb", buffering=0) as logf:     # unbuffered: watchable live
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    stopped = stopped or "timeout"
                    break
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
                if not ready:
                    silent = time.monotonic() - last_output
                    if stopped is None and silent > SILENCE_LIMIT:
                        stopped = f"stall: L1's console silent for {silent:.0f} s"
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                last_output = time.monotonic()
                logf.write(chunk)
                out.write(chunk)
                out.flush()
                partial += chunk
                *done, partial = partial.split(b"\n")
                new = [d.decode("utf-8", "replace").rstrip("\r") for d in done]
                lines += new
                if stopped is None:
                    hit = next((ln for ln in new if l1_stall(ln)), None)
                    if hit is not None:
                        stopped = f"stall: {hit.strip()}"
                        deadline = min(deadline, time.monotonic() + STALL_GRACE)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if partial:
        lines.append(partial.decode("utf-8", "replace"))
    return proc.returncode, lines, time.monotonic() - start, stopped


class Lane:
    """What every use of L1 needs: the packages, the kernel ABI, the cache and
    work directories, and the repository's interpreter. `tag` names this use's
    files in the work directory (the lane and the benchmark may run at once)."""

    def __init__(self, tag: str = "lane", echo=None):
        self.tag = tag
        self.echo = echo
        self.cache = cache_dir()
        self.work = os.path.join(self.cache, "work")
        os.makedirs(self.work, exist_ok=True)
        self.python = os.path.join(REPO, ".venv", "bin", "python")
        if not os.access(self.python, os.X_OK):
            raise LaneError(f"{self.python} is missing: run ci/setup first")
        ensure_packages(APT_PACKAGES)
        self.abi = kernel_abi(self.cache)
        # L1 sees the repository read-only: stale bytecode would be compiled again
        # (slowly, in TCG) at every start.
        sh(self.python, "-m", "compileall", "-q", "kvmm", "bench", cwd=REPO)

    def path(self, suffix: str) -> str:
        return os.path.join(self.work, f"{self.tag}-{suffix}" if self.tag != "lane" else suffix)

    def build_l2(self, init_script: str = "l2-init.sh", modules=L2_MODULES) -> tuple[str, str]:
        return build_l2(self.cache, self.abi, self.work, init_script,
                        os.path.basename(self.path("l2-initramfs.cpio")), modules)

    def run_l1(self, cmd: str, timeout: float, smp: int = 2, tap: bool = True,
               tcg_thread: str = "multi") -> tuple:
        """Boot L1, run `cmd` in the host's root there, power off; see run_qemu.
        Runs of the same tag take turns (their initramfs and console log have
        the same names)."""
        with self._turn():
            kernel, initrd = build_l1(self.cache, self.abi, self.work, cmd,
                                      os.path.basename(self.path("l1-initramfs.cpio")), tap)
            return run_qemu(kernel, initrd, timeout, self.path("l1-console.log"), smp,
                            self.echo, tcg_thread=tcg_thread)

    @contextlib.contextmanager
    def _turn(self):
        path = self.path("lock")
        with open(path, "a+") as f:
            waited = False
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LaneError(f"another run has held {path} for {LOCK_WAIT} s") \
                            from None
                    if not waited:
                        f.seek(0)
                        log(f"waiting for another {self.tag} run to finish "
                            f"({path}: {f.read().strip() or '?'})", self.echo)
                        waited = True
                    time.sleep(1)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _segments(lines: list[str], names: list[str]) -> dict[str, list[str]]:
    """The console lines of each run: from the previous `LANE-L1 run ... exit=`
    marker to this run's (a run without a marker gets the rest)."""
    out: dict[str, list[str]] = {}
    rest = lines
    for name in names:
        marker = next((i for i, ln in enumerate(rest)
                       if ln.startswith(f"LANE-L1 run {name} exit=")), None)
        out[name] = rest if marker is None else rest[:marker + 1]
        rest = [] if marker is None else rest[marker + 1:]
    return out


def verdict(lines: list[str], runs: list[L2Run], modes=(),
            cgroup: bool = False) -> tuple[bool, list[str]]:
    """(passed, problems) from L1's console. A run that did not finish (no
    `LANE-L1 run NAME exit=` marker: a hang, or the lane's timeout) is reported
    once, with the checks that failed before it stopped, not check by check."""
    problems = []
    names = [r.name for r in runs] + (["guest-modes"] if modes else []) + \
        ([CGROUP_RUN] if cgroup else [])
    segments = _segments(lines, names)
    finished = {}
    for name in names:
        marker = [ln for ln in segments[name] if ln.startswith(f"LANE-L1 run {name} exit=")]
        finished[name] = bool(marker)
        if not marker:
            problems.append(f"the {name} run did not finish")
        elif marker[-1] != f"LANE-L1 run {name} exit=0":
            problems.append(f"the {name} run failed ({marker[-1].rsplit(' ', 1)[-1]}; "
                            "see above)")
    for run in runs:
        seg = segments[run.name]
        checks = [ln for ln in seg if ln.startswith("LANE-L2 CHECK ")]
        problems += [f"{run.name}: L2 check failed: {ln[len('LANE-L2 CHECK '):]}"
                     for ln in checks if ln.split()[3:4] == ["FAIL"]]
        if not finished[run.name]:
            continue
        for name in run.wanted_checks():
            if not any(ln.startswith(f"LANE-L2 CHECK {name} PASS") for ln in checks):
                problems.append(f"{run.name}: L2 check {name} did not pass")
        if not any("kvmm boot-test: PASS" in ln for ln in seg):
            problems.append(f"{run.name}: kvmm boot-test did not report PASS (the guest's "
                            "poweroff must end it)")
    if modes:
        seg = segments["guest-modes"]
        missing = []
        for mode in modes:
            hit = [ln for ln in seg if ln.startswith(f"LANE-GK MODE {mode} ")]
            if not hit:
                missing.append(mode)
            elif hit[-1].split()[3] != "PASS":
                problems.append(f"guest kernel mode {mode}: {' '.join(hit[-1].split()[3:])}")
        if missing:
            problems.append(f"guest kernel modes without a result: {', '.join(missing)}")
        if finished["guest-modes"] and not any(ln == "LANE-GK RESULT PASS" for ln in seg):
            problems.append("the guest kernel modes did not report LANE-GK RESULT PASS")
    if cgroup:
        seg = segments[CGROUP_RUN]
        for ln in seg:
            words = ln.split(maxsplit=4)
            if ln.startswith("LANE-CG TEST ") and len(words) > 3 and words[3] == "FAIL":
                detail = ln.split(" s ", 1)[1] if " s " in ln else ""
                problems.append(f"cgroup v2 test {words[2]} failed: {detail}".rstrip(": "))
        if finished[CGROUP_RUN] and not any(ln.startswith("LANE-CG RESULT PASS") for ln in seg):
            problems.append("the cgroup v2 tests did not report LANE-CG RESULT PASS "
                            "(see the LANE-CG lines above)")
    return not problems, problems


def run_lane(args) -> int:
    t0 = time.monotonic()
    lane = Lane("lane")
    log(f"kernels: linux-image-{lane.abi}-{L1_FLAVOUR} (L1), "
        f"linux-image-{lane.abi}-{L2_FLAVOUR} (L2); cache {lane.cache}")
    l2_kernel, l2_initrd = lane.build_l2()
    disk = not args.no_disk and kvmm_supports_drives(lane.python)
    if not disk:
        log("no virtio-blk disk in this run" + (" (--no-disk)" if args.no_disk else
                                                " (kvmm has no --drive yet)"))
    net = not args.no_net
    runs = [L2Run("bzImage", l2_kernel, disk, net)]
    if not args.no_vmlinux:
        vmlinux = fetch_images(lane.cache).get("vmlinux")
        if vmlinux and os.path.exists(vmlinux):
            runs.append(L2Run("vmlinux", vmlinux, False, net))
        else:
            log("no vmlinux boot: the bzImage's payload could not be decompressed here")
    modes: list[str] = []
    if not args.no_modes:
        modes = args.modes.split(",") if args.modes else \
            list(GUEST_MODES) + (list(GUEST_NET_MODES) if net else [])
        if not os.path.exists(GUEST_KERNEL):
            raise LaneError(f"{GUEST_KERNEL} is not built: run `make -C guest-kernel` "
                            "(ci/setup does), or --no-modes")
    cgroup = not args.no_cgroup
    cmd = lane_command(lane.python, runs, l2_initrd, args.l2_timeout, args.verbose,
                       args.keep_xsave, modes, net, args.mode_timeout, cgroup)
    log(f"set-up took {time.monotonic() - t0:.1f} s")
    stalls: list[str] = []          # L1 lost a CPU (not a verdict on kvmm)
    failed: list[str] = []          # runs that finished and failed, first problem each
    while True:
        status, lines, elapsed, stopped = lane.run_l1(cmd, args.timeout, args.smp, tap=net,
                                                      tcg_thread=args.tcg_thread)
        runs_so_far = len(stalls) + len(failed) + 1
        if (stopped or "").startswith("stall"):
            stalls.append(stopped)
            print(flush=True)
            log(f"L1 STALLED after {elapsed:.1f} s, run {runs_so_far}: {stopped}")
            log("  (L1's own kernel lost a CPU under QEMU's TCG; not a kvmm verdict)")
            if len(stalls) <= args.stall_retries and runs_so_far < MAX_RUNS:
                log("running the lane again")
                continue
            break
        ok, problems = verdict(lines, runs, modes, cgroup)
        if (not ok and not stopped and len(failed) < args.failure_retries
                and runs_so_far < MAX_RUNS):
            # A kvmm fault fails every run; the emulated SVM of QEMU's TCG now and
            # then crashes or hangs an L2 that booted fine a minute before.
            failed.append(problems[0] if problems else "failed")
            print(flush=True)
            log(f"run {runs_so_far} FAILED: {'; '.join(problems[:3])}")
            log("running the lane again: it passes only if that run passes whole")
            continue
        break
    ok, problems = verdict(lines, runs, modes, cgroup)
    if stopped == "timeout":
        ok = False
        problems.insert(0, f"the lane did not finish within {args.timeout} s (QEMU killed)")
    elif stopped:
        ok = False
        problems.insert(0, f"L1 stalled in every attempt ({len(stalls)}): {stopped}")
    for first in reversed(failed):
        problems.append(f"an earlier run failed too: {first}")
    total = time.monotonic() - t0
    logpath = lane.path("l1-console.log")
    print(flush=True)
    passed = sum(ln.startswith("LANE-L2 CHECK ") and ln.split()[3:4] == ["PASS"]
                 for ln in lines)
    summary = (f"{len(runs)} L2 boots ({passed} checks passed), "
               f"{sum(ln.startswith('LANE-GK MODE ') and ln.split()[3] == 'PASS' for ln in lines)}"
               f"/{len(modes)} guest kernel modes")
    if cgroup:
        cg_passed = sum(ln.startswith("LANE-CG TEST ") and ln.split()[3:4] == ["PASS"]
                        for ln in lines)
        summary += f", {cg_passed} cgroup v2 tests passed"
    if stalls and ok:
        summary += f"; after {len(stalls)} L1 stall(s) under TCG, first: {stalls[0]}"
    if failed and ok:
        summary += f"; after a failed run ({failed[0]})"
    if ok:
        log(f"PASS in {total:.1f} s (L1 ran {elapsed:.1f} s): {summary}; console log {logpath}")
        return 0
    log(f"FAIL after {total:.1f} s (QEMU exit {status}); console log {logpath}")
    for p in problems:
        log(f"  - {p}")
    log("last console lines:")
    for line in lines[-CONSOLE_TAIL:]:
        print(f"  | {line}", flush=True)
    return 1


def exec_in_l1(args) -> int:
    """`lane.py exec CMD`: boot L1 (with its TAP) and run CMD in the host's root there."""
    lane = Lane("exec")
    status, lines, elapsed, stopped = lane.run_l1(args.cmd, args.timeout, args.smp,
                                                  tap=not args.no_net)
    print(flush=True)
    log(f"L1 ran {elapsed:.1f} s" + (f" and was killed ({stopped})" if stopped else
                                     f", QEMU exit {status}"))
    return 1 if stopped else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ci/lane/lane.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the lane")
    run.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                     help=f"seconds for the whole L1 run (default {DEFAULT_TIMEOUT})")
    run.add_argument("--l2-timeout", type=int, default=L2_TIMEOUT,
                     help=f"kvmm boot-test's --timeout inside L1 (default {L2_TIMEOUT})")
    run.add_argument("--mode-timeout", type=int, default=MODE_TIMEOUT,
                     help=f"kvmm's --timeout per guest-kernel mode (default {MODE_TIMEOUT})")
    run.add_argument("--smp", type=int, default=2, help="L1 CPUs (default 2)")
    run.add_argument("--tcg-thread", choices=("multi", "single"), default="multi",
                     help="QEMU's TCG threading for L1 (default multi: one host thread per "
                     "L1 CPU; single hung a 2-vCPU L2 in its boot when tried)")
    run.add_argument("--stall-retries", type=int, default=STALL_RETRIES,
                     help="run again this many times when L1's own kernel stalls under "
                     f"TCG (default {STALL_RETRIES})")
    run.add_argument("--failure-retries", type=int, default=FAILURE_RETRIES,
                     help="run again this many times when a run finishes and fails; the "
                     f"lane passes only on a whole passing run (default {FAILURE_RETRIES}; "
                     "0 to see every failure at once)")
    run.add_argument("--no-disk", action="store_true", help="no virtio-blk disk for L2")
    run.add_argument("--keep-xsave", action="store_true",
                     help="do not hide XSAVE from L2 (shows QEMU 7.2's XSETBV bug)")
    run.add_argument("--no-vmlinux", action="store_true",
                     help="boot only the bzImage, not also the vmlinux (ELF) extracted from it")
    run.add_argument("--verbose", action="store_true",
                     help="L2 boots without quiet: its whole kernel log on the console")
    run.add_argument("--net", action="store_true",
                     help="(the default; kept for old command lines)")
    run.add_argument("--no-net", action="store_true",
                     help="no virtio-net NIC for L2, no TAP in L1, no network modes")
    run.add_argument("--no-modes", action="store_true",
                     help="do not run the project's guest kernel modes in L1")
    run.add_argument("--modes", help="comma-separated guest kernel modes instead of the "
                     f"default set ({','.join(GUEST_MODES + GUEST_NET_MODES)})")
    run.add_argument("--no-cgroup", action="store_true",
                     help="do not run kvmm's cgroup tests on L1's cgroup v2 hierarchy")
    sub.add_parser("fetch", help="fetch the kernels and write the unit tests' images")
    ex = sub.add_parser("exec", help="boot L1 and run a shell command in the host's root "
                        "there (debugging)")
    ex.add_argument("--timeout", type=int, default=300)
    ex.add_argument("--smp", type=int, default=2)
    ex.add_argument("--no-net", action="store_true", help="no TAP in L1")
    ex.add_argument("cmd", help="shell command, run in the repository")
    args = ap.parse_args(argv)
    try:
        if args.command == "fetch":
            out = fetch_images(cache_dir())
            for key, path in out.items():
                log(f"{key}: {path}" + ("" if os.path.exists(path) else " (not available)"))
            return 0
        if args.command == "exec":
            return exec_in_l1(args)
        return run_lane(args)
    except LaneError as e:
        log(f"set-up problem: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
