#!/usr/bin/env python3
"""The hardware-KVM lane: kvmm boots a stock Debian kernel under a real
(hardware-style) KVM.

    L0  this machine: QEMU, TCG, `-cpu max` (an emulated AMD CPU with SVM/NPT)
    L1  Debian's generic kernel (linux-image-<abi>-amd64) with kvm_amd loaded;
        the host's root is shared read-only over virtio-9p and the repository's
        own kvmm runs from it in a chroot (ci/lane/l1-init.sh)
    L2  Debian's cloud kernel (linux-image-<abi>-cloud-amd64, unmodified, a
        bzImage) booted by `kvmm boot-test` with 2 vCPUs, a busybox initramfs
        with the virtio modules of the same package, and a virtio-blk disk;
        ci/lane/l2-init.sh checks CPUs, kvm-clock, the disk (mkfs, write,
        read back) and powers off through ACPI S5, which must end kvmm

Everything comes from Debian packages (`apt-get install` / `apt-get download`),
cached under $KVMM_LANE_CACHE (default /var/cache/kvmm-lane, or
~/.cache/kvmm-lane when not root). Output: the L1 console, streamed, then one
"lane: PASS|FAIL ..." line; exit status 0 or 1 (2 for a set-up problem).

    ci/lane/run            the whole lane (this file's `run`)
    ci/lane/fetch          only download and unpack the kernels, and write the
                           test images the unit tests use (bzImage, vmlinux)
"""
from __future__ import annotations

import argparse
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
DEFAULT_TIMEOUT = 540               # the whole lane, seconds
L2_TIMEOUT = 420                    # kvmm boot-test inside L1
CONSOLE_TAIL = 40


def log(msg: str) -> None:
    print(f"lane: {msg}", flush=True)


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
def build_l2(cache: str, abi: str, work: str) -> tuple[str, str]:
    tree = fetch_kernel(cache, abi, L2_FLAVOUR)
    vmlinuz, config, moddir = kernel_files(tree)
    with open(config) as f:
        cfg = f.read()
    for opt in ("CONFIG_ACPI=y", "CONFIG_VIRTIO_MMIO=m", "CONFIG_VIRTIO_BLK=m"):
        if opt not in cfg:
            raise LaneError(f"{config}: expected {opt}")
    c = base_initramfs("l2-init.sh")
    add_modules(c, moddir, L2_MODULES)
    return vmlinuz, write_file(os.path.join(work, "l2-initramfs.cpio"), c.bytes())


def build_l1(cache: str, abi: str, work: str, lane_cmd: str) -> tuple[str, str]:
    tree = fetch_kernel(cache, abi, L1_FLAVOUR)
    vmlinuz, _, moddir = kernel_files(tree)
    c = base_initramfs("l1-init.sh")
    add_modules(c, moddir, L1_MODULES)
    env = (f"LANE_REPO={shell_quote(REPO)}\n"
           f"LANE_MODULES={shell_quote(' '.join(L1_MODULES))}\n"
           f"LANE_CMD={shell_quote(lane_cmd)}\n")
    c.file("lane.env", env.encode())
    return vmlinuz, write_file(os.path.join(work, "l1-initramfs.cpio"), c.bytes())


def kvmm_supports_drives(python: str) -> bool:
    r = sh(python, "-m", "kvmm", "boot-test", "--help", cwd=REPO)
    return "--drive" in r.stdout


class L2Run:
    """One kvmm boot of the stock kernel inside L1."""
    def __init__(self, name: str, kernel: str, disk: bool):
        self.name = name          # "bzImage" or "vmlinux"
        self.kernel = kernel
        self.disk = disk


def boot_test_command(python: str, run: L2Run, initrd: str, net: bool, l2_timeout: int,
                      verbose: bool = False, keep_xsave: bool = False) -> str:
    cmdline = ["console=ttyS0", "reboot=k", "panic=-1", "pci=off", "8250.nr_uarts=1",
               "rdinit=/init", f"lane.cpus={L2_VCPUS}", f"lane.kind={run.name}"]
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
    if net:
        # A TAP in L1 that kvmm creates and brings up; no address, no traffic yet.
        # Next step: address both ends and ping across it in l2-init.sh.
        args += ["--net", "tap=lane0"]
        cmdline.append("lane.net=1")
    args += ["--cmdline", " ".join(cmdline)]
    return " ".join(shell_quote(a) for a in args)


def lane_command(python: str, runs: list[L2Run], initrd: str, net: bool, l2_timeout: int,
                 verbose: bool = False, keep_xsave: bool = False) -> str:
    """The shell command L1 runs in the host's root: each boot, then a marker
    line `LANE-L1 run NAME exit=STATUS`."""
    parts = []
    if any(r.disk for r in runs):
        parts.append(f"truncate -s {DISK_SIZE} /dev/shm/lane-disk.img")
    for run in runs:
        parts.append(boot_test_command(python, run, initrd, net, l2_timeout, verbose,
                                       keep_xsave))
        parts.append(f'echo "LANE-L1 run {run.name} exit=$?"')
    return "; ".join(parts)


def run_qemu(vmlinuz: str, initrd: str, timeout: float, logpath: str, smp: int) -> tuple:
    cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-M", "q35",
           "-m", L1_MEM, "-smp", str(smp), "-nodefaults", "-display", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
           "-append", "console=ttyS0 rdinit=/init panic=-1 mitigations=off quiet loglevel=4",
           "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
           "multidevs=remap"]
    log("L1: " + " ".join(cmd))
    start = time.monotonic()
    lines: list[str] = []
    partial = b""
    with open(logpath, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        timed_out = False
        try:
            while True:
                left = timeout - (time.monotonic() - start)
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                logf.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                partial += chunk
                *done, partial = partial.split(b"\n")
                lines += [d.decode("utf-8", "replace").rstrip("\r") for d in done]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if partial:
        lines.append(partial.decode("utf-8", "replace"))
    return proc.returncode, lines, time.monotonic() - start, timed_out


def verdict(lines: list[str], runs: list[L2Run]) -> tuple[bool, list[str]]:
    problems = []
    checks = [ln for ln in lines if ln.startswith("LANE-L2 CHECK ")]
    problems += [f"L2 check failed: {ln[len('LANE-L2 CHECK '):]}" for ln in checks
                 if " FAIL" in ln]
    wanted = ["cpus", "kvm-clock"] + (["virtio-blk-found", "read-back"]
                                      if any(r.disk for r in runs) else [])
    if any("lane.net=1" in ln for ln in lines if ln.startswith("LANE-L2 init:")):
        wanted.append("virtio-net-found")
    for name in wanted:
        if not any(ln.startswith(f"LANE-L2 CHECK {name} PASS") for ln in checks):
            problems.append(f"L2 check {name} did not pass")
    for run in runs:
        marker = [ln for ln in lines if ln.startswith(f"LANE-L1 run {run.name} exit=")]
        if not marker:
            problems.append(f"the {run.name} boot did not finish")
        elif marker[-1] != f"LANE-L1 run {run.name} exit=0":
            problems.append(f"kvmm boot-test of the {run.name} failed "
                            f"({marker[-1].rsplit(' ', 1)[-1]}; 1 = FAIL, see above)")
    if sum("kvmm boot-test: PASS" in ln for ln in lines) < len(runs):
        problems.append("kvmm boot-test did not report PASS for every boot (the guest's "
                        "poweroff must end it)")
    return not problems, problems


def run_lane(args) -> int:
    cache = cache_dir()
    work = os.path.join(cache, "work")
    os.makedirs(work, exist_ok=True)
    python = os.path.join(REPO, ".venv", "bin", "python")
    if not os.access(python, os.X_OK):
        raise LaneError(f"{python} is missing: run ci/setup first")
    t0 = time.monotonic()
    ensure_packages(APT_PACKAGES)
    abi = kernel_abi(cache)
    log(f"kernels: linux-image-{abi}-{L1_FLAVOUR} (L1), linux-image-{abi}-{L2_FLAVOUR} (L2); "
        f"cache {cache}")
    l2_kernel, l2_initrd = build_l2(cache, abi, work)
    disk = not args.no_disk and kvmm_supports_drives(python)
    if not disk:
        log("no virtio-blk disk in this run" + (" (--no-disk)" if args.no_disk else
                                                " (kvmm has no --drive yet)"))
    runs = [L2Run("bzImage", l2_kernel, disk)]
    if not args.no_vmlinux:
        vmlinux = fetch_images(cache).get("vmlinux")
        if vmlinux and os.path.exists(vmlinux):
            runs.append(L2Run("vmlinux", vmlinux, False))
        else:
            log("no vmlinux boot: the bzImage's payload could not be decompressed here")
    cmd = lane_command(python, runs, l2_initrd, args.net, args.l2_timeout, args.verbose,
                       args.keep_xsave)
    l1_kernel, l1_initrd = build_l1(cache, abi, work, cmd)
    log(f"set-up took {time.monotonic() - t0:.1f} s")
    logpath = os.path.join(work, "l1-console.log")
    status, lines, elapsed, timed_out = run_qemu(l1_kernel, l1_initrd, args.timeout, logpath,
                                                 args.smp)
    ok, problems = verdict(lines, runs)
    if timed_out:
        ok = False
        problems.insert(0, f"the lane did not finish within {args.timeout} s (QEMU killed)")
    total = time.monotonic() - t0
    print(flush=True)
    if ok:
        log(f"PASS in {total:.1f} s (L1 ran {elapsed:.1f} s); console log {logpath}")
        return 0
    log(f"FAIL after {total:.1f} s (QEMU exit {status}); console log {logpath}")
    for p in problems:
        log(f"  - {p}")
    log("last console lines:")
    for line in lines[-CONSOLE_TAIL:]:
        print(f"  | {line}", flush=True)
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ci/lane/lane.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the lane")
    run.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                     help=f"seconds for the whole L1 run (default {DEFAULT_TIMEOUT})")
    run.add_argument("--l2-timeout", type=int, default=L2_TIMEOUT,
                     help=f"kvmm boot-test's --timeout inside L1 (default {L2_TIMEOUT})")
    run.add_argument("--smp", type=int, default=2, help="L1 CPUs (default 2)")
    run.add_argument("--no-disk", action="store_true", help="no virtio-blk disk for L2")
    run.add_argument("--keep-xsave", action="store_true",
                     help="do not hide XSAVE from L2 (shows QEMU 7.2's XSETBV bug)")
    run.add_argument("--no-vmlinux", action="store_true",
                     help="boot only the bzImage, not also the vmlinux (ELF) extracted from it")
    run.add_argument("--verbose", action="store_true",
                     help="L2 boots without quiet: its whole kernel log on the console")
    run.add_argument("--net", action="store_true",
                     help="also give L2 a virtio-net NIC (a TAP in L1) and require eth0")
    sub.add_parser("fetch", help="fetch the kernels and write the unit tests' images")
    args = ap.parse_args(argv)
    try:
        if args.command == "fetch":
            out = fetch_images(cache_dir())
            for key, path in out.items():
                log(f"{key}: {path}" + ("" if os.path.exists(path) else " (not available)"))
            return 0
        return run_lane(args)
    except LaneError as e:
        log(f"set-up problem: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
