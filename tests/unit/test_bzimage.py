"""The bzImage loader, the loader front end, initrd placement and the zero page:
synthetic images (one bad image per header check) and Debian's real kernel.

The real images come from the fixture step `ci/lane/fetch`, which writes
$KVMM_LANE_CACHE/images/{bzImage,vmlinux,config} (default cache
/var/cache/kvmm-lane; $KVMM_TEST_IMAGES overrides the directory). Without
them those tests are skipped, or fail with KVMM_REQUIRE_IMAGES=1.
"""
import os
import struct

import pytest

from kvmm import builder
from kvmm.arch.x86_64 import e820, layout
from kvmm.boot import bzimage, initrd, loader, params
from kvmm.boot.errors import BootError, InvalidImage
from kvmm.memory import GuestMemory
from kvmm.spec import BootSourceSpec, HostSpec, MachineSpec, SpecError, VmSpec
from tests import elfimage

MiB = 1 << 20
SETUP_SECTS = 4
KERNEL = bytes(range(256)) * 16          # 4 KiB of "protected-mode code"
HEADER_END = 0x26C                        # boot protocol 2.15


def make_bzimage(**fields) -> bytes:
    """A small, valid bzImage; keyword arguments override header fields (by
    bzimage.py's constant names, lower case) or the layout (`kernel`,
    `setup_sects`, `jump_end`, `boot_flag`, `magic`)."""
    kernel = fields.pop("kernel", KERNEL)
    setup_sects = fields.pop("setup_sects", SETUP_SECTS)
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    values = {
        "syssize": (bzimage.SYSSIZE, "<I", len(kernel) // 16),
        "boot_flag": (bzimage.BOOT_FLAG, "<H", bzimage.BOOT_FLAG_VALUE),
        "version": (bzimage.VERSION, "<H", 0x020F),
        "loadflags": (bzimage.LOADFLAGS, "<B", bzimage.LOADED_HIGH),
        "initrd_addr_max": (bzimage.INITRD_ADDR_MAX, "<I", 0x7FFFFFFF),
        "kernel_alignment": (bzimage.KERNEL_ALIGNMENT, "<I", 0x200000),
        "relocatable_kernel": (bzimage.RELOCATABLE_KERNEL, "<B", 1),
        "min_alignment": (bzimage.MIN_ALIGNMENT, "<B", 21),
        "xloadflags": (bzimage.XLOADFLAGS, "<H", bzimage.XLF_KERNEL_64
                       | bzimage.XLF_CAN_BE_LOADED_ABOVE_4G),
        "cmdline_size": (bzimage.CMDLINE_SIZE, "<I", 2047),
        "payload_offset": (bzimage.PAYLOAD_OFFSET, "<I", 0x100),
        "payload_length": (bzimage.PAYLOAD_LENGTH, "<I", 0x800),
        "pref_address": (bzimage.PREF_ADDRESS, "<Q", 0x1000000),
        "init_size": (bzimage.INIT_SIZE, "<I", 0x40000),
    }
    setup[bzimage.SETUP_SECTS] = setup_sects
    setup[bzimage.JUMP] = 0xEB                          # jmp short
    setup[bzimage.JUMP + 1] = fields.pop("jump_end", HEADER_END) - bzimage.HEADER
    setup[bzimage.HEADER:bzimage.HEADER + 4] = fields.pop("magic", bzimage.HDRS_MAGIC)
    for key, (offset, fmt, default) in values.items():
        struct.pack_into(fmt, setup, offset, fields.pop(key, default))
    assert not fields, f"unknown fields {fields}"
    return bytes(setup) + kernel


def test_good_image_parses():
    bz = bzimage.parse_bzimage(make_bzimage(), "k")
    assert bz.version == 0x020F and bz.version_text == "2.15"
    assert bz.setup_size == 5 * 512 and bz.kernel_offset == 5 * 512
    assert bz.kernel_size == len(KERNEL)
    assert bz.load_addr == 0x1000000 and bz.entry == 0x1000200
    assert bz.high == 0x1000000 + 0x40000
    assert bz.cmdline_size == 2047 and bz.initrd_addr_max == 0x7FFFFFFF
    assert bz.header == make_bzimage()[0x1F1:HEADER_END]


def test_setup_sects_zero_means_four():
    image = make_bzimage(setup_sects=0)
    assert bzimage.parse_bzimage(image).setup_size == 5 * 512


def test_trailing_bytes_are_ignored():
    # Debian's signed images carry a signature after the kernel.
    bz = bzimage.parse_bzimage(make_bzimage() + b"SIGNATURE" * 10)
    assert bz.kernel_size == len(KERNEL)


def _cut(n):
    return make_bzimage()[:n]


BAD = {
    "empty": (b"", "truncated"),
    "shorter than the boot flag": (_cut(0x1F0), "truncated"),
    "wrong boot flag": (make_bzimage(boot_flag=0x1234), "boot flag"),
    "no HdrS": (make_bzimage(magic=b"HdrX"), "HdrS"),
    "protocol 2.06": (make_bzimage(version=0x0206), "older than 2.12"),
    "protocol 2.11": (make_bzimage(version=0x020B), "older than 2.12"),
    "header ends too early": (make_bzimage(jump_end=0x240), "setup header ends"),
    "header ends too late": (make_bzimage(jump_end=0x2A0), "setup header ends"),
    "truncated in the header": (_cut(0x250), "truncated in the setup header"),
    "truncated in the version": (_cut(0x207), "truncated in the setup header"),
    "syssize 0": (make_bzimage(syssize=0), "syssize is 0"),
    "truncated kernel": (_cut(5 * 512 + 100), "truncated"),
    "syssize past the end": (make_bzimage(syssize=0x10000), "truncated"),
    "not loaded high": (make_bzimage(loadflags=0), "LOADED_HIGH"),
    "not 64-bit": (make_bzimage(xloadflags=bzimage.XLF_CAN_BE_LOADED_ABOVE_4G), "XLF_KERNEL_64"),
    "cmdline_size 0": (make_bzimage(cmdline_size=0), "cmdline_size"),
    "initrd_addr_max below 1 MiB": (make_bzimage(initrd_addr_max=0xFFFFF), "initrd_addr_max"),
    "alignment not a power of two": (make_bzimage(kernel_alignment=0x300000), "kernel_alignment"),
    "alignment too small": (make_bzimage(kernel_alignment=0x100), "kernel_alignment"),
    "alignment too large": (make_bzimage(kernel_alignment=1 << 31,
                                         pref_address=1 << 31), "kernel_alignment"),
    "payload outside the kernel": (make_bzimage(payload_offset=0x800, payload_length=0x900),
                                   "payload"),
    "pref_address below 1 MiB": (make_bzimage(pref_address=0x80000, relocatable_kernel=0),
                                 "below 1 MiB"),
    "pref_address misaligned": (make_bzimage(pref_address=0x1100000), "kernel_alignment"),
    "pref_address not page aligned": (make_bzimage(pref_address=0x1000800,
                                                   relocatable_kernel=0), "page aligned"),
    "init_size smaller than the kernel": (make_bzimage(init_size=0x100), "init_size"),
    "into the MMIO hole": (make_bzimage(pref_address=0xBFE00000, init_size=0x400000),
                           "MMIO hole"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_image(case):
    image, needle = BAD[case]
    with pytest.raises(InvalidImage) as e:
        loader.parse_kernel(image, name="bad.img")
    text = str(e.value)
    assert needle in text, text
    assert "\n" not in text and text.startswith("bad.img: ")


def test_every_check_has_a_fixture():
    """Each `raise InvalidImage` in bzimage.parse_bzimage is reached by a case above."""
    import inspect
    lines, first = inspect.getsourcelines(bzimage.parse_bzimage)
    checks = {first + i for i, line in enumerate(lines)
              if line.lstrip().startswith("raise InvalidImage")}
    reached = set()
    for image, _ in BAD.values():
        try:
            bzimage.parse_bzimage(image)
        except InvalidImage as e:
            tb = e.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            reached.add(tb.tb_lineno)
    assert checks - reached == set(), "checks without a bad-image fixture (line numbers)"


def test_neither_elf_nor_bzimage():
    with pytest.raises(InvalidImage, match="not an ELF file.*nor a bzImage"):
        loader.parse_kernel(b"#!/bin/sh\n" * 100, "k")
    with pytest.raises(InvalidImage, match="truncated"):
        loader.parse_kernel(b"\x7fEL", "k")


def test_elf_path_unchanged():
    image = elfimage.build()
    k = loader.parse_kernel(image, "k")
    assert k.kind == "ELF" and k.entry == 0x100000 and k.pvh_entry is None
    assert k.initrd_addr_max == loader.DEFAULT_INITRD_ADDR_MAX
    with GuestMemory([(0, 4 * MiB)]) as mem:
        result = k.load(image, mem)
        assert result.entry == 0x100000 and result.setup_header is None
        assert mem.read(0x100000, len(elfimage.CODE)) == elfimage.CODE


def test_load_and_zero_page():
    image = make_bzimage()
    k = loader.parse_kernel(image, "k")
    assert k.kind == "bzImage" and k.cmdline_max == 2047
    with GuestMemory([(0, 32 * MiB)]) as mem:
        mem.write(0x1000000 + len(KERNEL), b"\xaa" * 16)
        result = k.load(image, mem)
        assert result.entry == 0x1000200
        assert mem.read(0x1000000, len(KERNEL)) == KERNEL
        assert mem.read(0x1000000 + len(KERNEL), 16) == b"\xaa" * 16   # nothing past syssize
    page = params.build_zero_page(e820.e820_map([(0, 32 * MiB)]), layout.CMDLINE, 10,
                                  setup_header=result.setup_header, initrd=(0x1F00000, 0x1234),
                                  acpi_rsdp=layout.ACPI_RSDP)
    # The kernel's own header fields survive; the loader's are filled in.
    assert page[0x1F1:0x1F1 + 13] == image[0x1F1:0x1F1 + 13]
    assert struct.unpack_from("<H", page, 0x1FE)[0] == 0xAA55 and page[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<I", page, bzimage.CMDLINE_SIZE)[0] == 2047
    assert struct.unpack_from("<Q", page, bzimage.PREF_ADDRESS)[0] == 0x1000000
    assert page[params.TYPE_OF_LOADER] == params.LOADER_TYPE_UNDEFINED
    assert struct.unpack_from("<I", page, params.CMD_LINE_PTR)[0] == layout.CMDLINE
    assert struct.unpack_from("<II", page, params.RAMDISK_IMAGE) == (0x1F00000, 0x1234)
    assert struct.unpack_from("<Q", page, params.ACPI_RSDP_ADDR)[0] == layout.ACPI_RSDP
    assert page[params.E820_ENTRIES] == 3


def test_elf_zero_page_keeps_the_guest_protocol():
    page = params.build_zero_page(e820.e820_map([(0, 32 * MiB)]), layout.CMDLINE, 10)
    assert struct.unpack_from("<I", page, params.CMDLINE_SIZE)[0] == 10
    assert struct.unpack_from("<Q", page, params.ACPI_RSDP_ADDR)[0] == 0


def test_needs_more_ram():
    k = loader.parse_kernel(make_bzimage(), "k")
    k.check_fits(0x1040000)
    with pytest.raises(InvalidImage, match="--mem"):
        k.check_fits(0x103F000)


# initrd placement ------------------------------------------------------------------
class FakeKernel:
    def __init__(self, high, initrd_addr_max=0x7FFFFFFF):
        self.high = high
        self.initrd_addr_max = initrd_addr_max


def test_initrd_goes_high_and_page_aligned():
    addr = initrd.place_initrd(0x1801, FakeKernel(0x2000000), 64 * MiB)
    assert addr % 4096 == 0 and addr + 0x1801 <= 64 * MiB and addr == 64 * MiB - 0x2000


def test_initrd_respects_initrd_addr_max():
    addr = initrd.place_initrd(MiB, FakeKernel(0x2000000, initrd_addr_max=0x2FFFFFF), 256 * MiB)
    assert addr + MiB <= 0x3000000 and addr == 0x3000000 - MiB


def test_initrd_stays_below_the_mmio_hole():
    addr = initrd.place_initrd(MiB, FakeKernel(0x2000000), layout.MMIO_GAP_START)
    assert addr + MiB <= layout.MMIO_GAP_START


def test_initrd_does_not_fit():
    with pytest.raises(initrd.InitrdError, match="does not fit.*--mem") as e:
        initrd.place_initrd(40 * MiB, FakeKernel(0x2000000), 64 * MiB)
    assert isinstance(e.value, BootError) and "\n" not in str(e.value)
    with pytest.raises(initrd.InitrdError, match="does not fit"):   # below the kernel's limit
        initrd.place_initrd(2 * MiB, FakeKernel(0x2000000, initrd_addr_max=0x20FFFFF), 64 * MiB)


def test_initrd_file_checks(tmp_path):
    with pytest.raises(initrd.InitrdError, match="does not exist"):
        initrd.initrd_size(str(tmp_path / "nope"))
    with pytest.raises(initrd.InitrdError, match="is a directory"):
        initrd.initrd_size(str(tmp_path))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(initrd.InitrdError, match="is empty"):
        initrd.initrd_size(str(tmp_path / "empty"))


def test_initrd_loads(tmp_path):
    data = os.urandom(10000)
    (tmp_path / "rd").write_bytes(data)
    rd = initrd.prepare_initrd(str(tmp_path / "rd"), FakeKernel(0x200000), 16 * MiB)
    with GuestMemory([(0, 16 * MiB)]) as mem:
        initrd.load_initrd(rd, mem)
        assert mem.read(rd.addr, len(data)) == data
    (tmp_path / "rd").write_bytes(data[:100])
    with GuestMemory([(0, 16 * MiB)]) as mem, pytest.raises(initrd.InitrdError,
                                                            match="changed size"):
        initrd.load_initrd(rd, mem)


# builder.prepare: every check before a VM exists ------------------------------------
def prepare(kernel, boot_args=None, initrd_path=None, mem_mib=64) -> builder.Prepared:
    spec = VmSpec(boot_source=BootSourceSpec(kernel_image_path=str(kernel), boot_args=boot_args,
                                             initrd_path=None if initrd_path is None
                                             else str(initrd_path)),
                  machine=MachineSpec(mem_size_mib=mem_mib), host=HostSpec(console="none"))
    prep = builder.prepare(spec)
    prep.close()
    return prep


def test_prepare_checks_cmdline_against_the_kernel(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(make_bzimage(cmdline_size=100))
    assert prepare(k, boot_args="x" * 100).cmdline == b"x" * 100 + b"\0"
    with pytest.raises(SpecError, match="accepts at most 100") as e:
        prepare(k, boot_args="x" * 101)
    assert e.value.field == "boot-source.boot_args"


def test_prepare_places_the_initrd(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(make_bzimage())
    rd = tmp_path / "rd"
    rd.write_bytes(b"x" * 5000)
    prep = prepare(k, initrd_path=rd, mem_mib=64)
    assert prep.initrd.addr >= 0x1040000 and prep.initrd.addr + 5000 <= 64 * MiB
    rd.write_bytes(b"x" * (63 * MiB))
    with pytest.raises(BootError, match="does not fit"):
        prepare(k, initrd_path=rd, mem_mib=64)


def test_prepare_kernel_needs_more_ram(tmp_path):
    k = tmp_path / "bz"
    k.write_bytes(make_bzimage(init_size=8 * MiB, pref_address=0x4000000))
    with pytest.raises(InvalidImage, match="give it more memory with --mem"):
        prepare(k, mem_mib=64)


# Debian's kernel -------------------------------------------------------------------
def images_dir() -> str:
    env = os.environ.get("KVMM_TEST_IMAGES")
    if env:
        return env
    cache = os.environ.get("KVMM_LANE_CACHE") or (
        "/var/cache/kvmm-lane" if os.geteuid() == 0
        else os.path.join(os.path.expanduser("~"), ".cache", "kvmm-lane"))
    return os.path.join(cache, "images")


def real_image(name: str) -> str:
    path = os.path.join(images_dir(), name)
    if not os.path.exists(path):
        why = (f"{path} is missing: run ci/lane/fetch (downloads Debian's cloud kernel "
               "package into the lane's cache)")
        if name == "vmlinux" and os.path.exists(os.path.join(images_dir(), "bzImage")):
            why = (f"{path} is missing: ci/lane/fetch could not decompress the bzImage's "
                   "payload here (it needs the lz4 tool for Debian's LZ4 kernels)")
        if os.environ.get("KVMM_REQUIRE_IMAGES") == "1":
            pytest.fail(f"{why} (KVMM_REQUIRE_IMAGES=1: not skipping)")
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def debian_bzimage():
    with open(real_image("bzImage"), "rb") as f:
        return f.read()


def test_debian_bzimage(debian_bzimage):
    k = loader.parse_kernel(debian_bzimage, "vmlinuz")
    bz = k.bz
    assert k.kind == "bzImage" and bz.version >= 0x020C
    assert bz.relocatable and bz.xloadflags & bzimage.XLF_KERNEL_64
    assert bz.load_addr == 0x1000000               # CONFIG_PHYSICAL_START
    assert bz.kernel_alignment == 0x200000          # CONFIG_PHYSICAL_ALIGN
    assert k.cmdline_max == 2047                    # COMMAND_LINE_SIZE - 1
    assert bz.setup_size + bz.kernel_size <= len(debian_bzimage)
    with pytest.raises(InvalidImage, match="--mem"):
        k.check_fits(64 * MiB)                      # init_size is ~50 MiB above 16 MiB
    k.check_fits(128 * MiB)
    with GuestMemory([(0, 128 * MiB)]) as mem:
        result = k.load(debian_bzimage, mem)
        assert result.entry == 0x1000200
        start = bz.setup_size
        assert mem.read(0x1000000, 4096) == debian_bzimage[start:start + 4096]
        assert mem.read(0x1000000 + bz.kernel_size - 4096, 4096) == \
            debian_bzimage[start + bz.kernel_size - 4096:start + bz.kernel_size]
        assert result.setup_header == debian_bzimage[0x1F1:0x202 + debian_bzimage[0x201]]


def test_debian_bzimage_truncated(debian_bzimage):
    with pytest.raises(InvalidImage, match="truncated"):
        loader.parse_kernel(debian_bzimage[:len(debian_bzimage) // 2], "vmlinuz")


def test_debian_vmlinux(debian_bzimage):
    with open(real_image("vmlinux"), "rb") as f:
        image = f.read()
    k = loader.parse_kernel(image, "vmlinux")
    assert k.kind == "ELF"
    assert k.entry == 0x1000000                     # startup_64, physical
    assert k.pvh_entry is not None                  # CONFIG_PVH: the Xen PVH entry note
    bz = loader.parse_kernel(debian_bzimage, "vmlinuz").bz
    # The decompressed kernel fits in what the bzImage asks for.
    assert k.high - k.low <= bz.init_size
    with GuestMemory([(0, 128 * MiB)]) as mem:
        assert k.load(image, mem).entry == 0x1000000
        seg = k.elf.segments[0]
        assert mem.read(seg.paddr, 4096) == image[seg.file_offset:seg.file_offset + 4096]


# The CLI: one line on stderr, exit status 2, nothing started -------------------------
@pytest.mark.parametrize("case,extra,needle", [
    ("truncated", [], "truncated"),
    ("wrong magic", [], "HdrS"),
    ("old protocol", [], "older than 2.12"),
    ("initrd too big", ["--initrd", "{big}"], "does not fit"),
    ("cmdline too long", ["--cmdline", "x" * 2048], "accepts at most 2047"),
    ("needs more RAM", ["--mem", "16M"], "--mem"),
])
def test_cli_refuses_before_anything_runs(tmp_path, capsys, case, extra, needle):
    from kvmm import cli
    images = {"truncated": make_bzimage()[:3000], "wrong magic": make_bzimage(magic=b"HdrZ"),
              "old protocol": make_bzimage(version=0x0206)}
    k = tmp_path / "bz"
    k.write_bytes(images.get(case, make_bzimage()))
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (60 * MiB))
    argv = [a.replace("{big}", str(big)) for a in extra]
    for command in ("run", "boot-test"):
        args = [command, "--kernel", str(k), *argv]
        if command == "boot-test":
            args += ["--success", "x", "--require-kvm"]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kvmm: ") and needle in err[0], err
