"""kvmm's PVM-native ELF note: the guest kernel carries it, other kernels do not,
and a malformed image never gets past the checked note reader."""
import os
import struct
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from kvmm.boot import elf, native
from kvmm.boot.errors import InvalidImage
from kvmm.guest_image import default_kernel
from tests import elfimage
from tests.unit.test_bzimage import make_bzimage, real_image

NATIVE_DESC = struct.pack("<I", native.KVMM_PVM_NATIVE_RULES)


def kvmm_note(desc: bytes = NATIVE_DESC, owner: bytes = b"kvmm\0",
              ntype: int = native.KVMM_ELFNOTE_PVM_NATIVE) -> bytes:
    return elfimage.note(owner, ntype, desc)


@pytest.fixture(scope="module")
def guest_elf() -> bytes:
    path = default_kernel()
    if not os.path.exists(path):
        pytest.fail(f"the guest kernel {path} is not built: run `make -C guest-kernel`")
    with open(path, "rb") as f:
        return f.read()


def test_the_guest_kernel_carries_the_note(guest_elf):
    assert elf.find_note(guest_elf, b"kvmm", native.KVMM_ELFNOTE_PVM_NATIVE) == NATIVE_DESC
    assert native.runs_natively_on_pvm(guest_elf)
    assert native.emulation_warning(guest_elf, "kvmm-guest.elf", pvm=True) is None
    # the PVH note beside it is still found
    assert elf.parse_elf(guest_elf).pvh_entry is not None


def test_the_guest_kernel_without_the_note_section(guest_elf, tmp_path):
    src, out = tmp_path / "in.elf", tmp_path / "out.elf"
    src.write_bytes(guest_elf)
    subprocess.run(["objcopy", "--remove-section=.note.kvmm", str(src), str(out)], check=True)
    stripped = out.read_bytes()
    assert elf.parse_elf(stripped).pvh_entry is not None
    assert not native.runs_natively_on_pvm(stripped)


def test_synthetic_images():
    assert native.runs_natively_on_pvm(elfimage.build(notes=kvmm_note()))
    xen = elfimage.note(b"Xen\0", elf.XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x100000))
    assert native.runs_natively_on_pvm(elfimage.build(notes=xen + kvmm_note()))
    assert not native.runs_natively_on_pvm(elfimage.build())                      # no note
    assert not native.runs_natively_on_pvm(elfimage.build(notes=xen))
    assert not native.runs_natively_on_pvm(elfimage.build(notes=kvmm_note(bytes(4))))
    assert not native.runs_natively_on_pvm(elfimage.build(notes=kvmm_note(b"\1\0")))
    assert not native.runs_natively_on_pvm(elfimage.build(notes=kvmm_note(owner=b"kvmx\0")))
    assert not native.runs_natively_on_pvm(elfimage.build(notes=kvmm_note(ntype=2)))


def test_note_in_a_segment_aligned_to_8():
    note = struct.pack("<III", 5, 4, native.KVMM_ELFNOTE_PVM_NATIVE) + b"kvmm\0" + bytes(3) \
        + NATIVE_DESC + bytes(4)
    image = bytearray(elfimage.build(notes=note))
    p_align = elf.EHDR.size + elf.PHDR.size + 48          # the note header's p_align
    struct.pack_into("<Q", image, p_align, 8)
    assert elf.PHDR.unpack_from(image, elf.EHDR.size + elf.PHDR.size)[7] == 8
    assert native.runs_natively_on_pvm(bytes(image))


def test_bzimages_do_not_carry_it():
    assert not native.runs_natively_on_pvm(make_bzimage())
    warning = native.emulation_warning(make_bzimage(), "vmlinuz", pvm=True)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("warning: vmlinuz will run in the instruction emulator")
    assert "VMX/SVM" in warning and "kvmm's guest kernel" in warning


def test_no_warning_on_hardware_kvm():
    assert native.emulation_warning(make_bzimage(), "vmlinuz", pvm=False) is None


def test_pvm_host():
    assert native.pvm_host() == os.path.exists("/sys/module/kvm_pvm")


@pytest.mark.parametrize("name", ["bzImage", "vmlinux"])
def test_debian_kernels_run_emulated(name):
    with open(real_image(name), "rb") as f:
        image = f.read()
    assert not native.runs_natively_on_pvm(image)
    assert native.emulation_warning(image, name, pvm=True) is not None


BAD_NOTES = {
    "name past the segment": struct.pack("<III", 4000, 4, 1) + b"kvmm",
    "descriptor past the segment": struct.pack("<III", 5, 1 << 31, 1) + b"kvmm\0\0\0\0",
    "sizes near 2**32": struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 1) + bytes(8),
}


@pytest.mark.parametrize("case", sorted(BAD_NOTES))
def test_malformed_notes_are_rejected(case):
    image = elfimage.build(notes=BAD_NOTES[case])
    with pytest.raises(InvalidImage, match="malformed ELF note"):
        elf.find_note(image, b"kvmm", native.KVMM_ELFNOTE_PVM_NATIVE)
    assert not native.runs_natively_on_pvm(image)


def test_note_segment_past_the_end_of_the_file():
    image = bytearray(elfimage.build(notes=kvmm_note()))
    p_filesz = elf.EHDR.size + elf.PHDR.size + 32
    struct.pack_into("<Q", image, p_filesz, 1 << 40)
    with pytest.raises(InvalidImage, match="note segment ends past the file end"):
        elf.find_note(bytes(image), b"kvmm", native.KVMM_ELFNOTE_PVM_NATIVE)
    assert not native.runs_natively_on_pvm(bytes(image))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(data):
    assert native.runs_natively_on_pvm(data) is False
    assert native.runs_natively_on_pvm(elf.ELF_MAGIC + data) is False


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_corrupted_headers_and_notes(data):
    """Overwrite bytes of the ELF header, the program headers or the notes of a
    valid image: the answer is a bool and the reader raises only InvalidImage."""
    image = bytearray(elfimage.build(notes=kvmm_note()))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(image) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        image[at:at + len(chunk)] = chunk
    image = bytes(image[:data.draw(st.integers(0, len(image)))])
    assert isinstance(native.runs_natively_on_pvm(image), bool)
    try:
        elf.find_note(image, b"kvmm", native.KVMM_ELFNOTE_PVM_NATIVE)
    except InvalidImage:
        pass
