"""Will a kernel run natively under the software-virtualization KVM module?

On a host whose /dev/kvm is the "PVM" module (`kvm_pvm`: no VMX/SVM, KVM in
software) a guest runs at full speed only while it follows the module's
rules: long mode, U/S=1 in every present page-table entry, a VIF page
registered per vCPU, canonical RIP/RSP/FS/GS bases. Anything else goes
through KVM's instruction emulator, about 1 us per instruction: a stock Linux
bzImage or vmlinux would need hours to boot.

A kernel declares that it follows the rules with an ELF note in a PT_NOTE
segment (docs/guest-protocol.md, "Image"):

    name "kvmm", type KVMM_ELFNOTE_PVM_NATIVE (1), a 4-byte little-endian
    descriptor whose bit 0 (KVMM_PVM_NATIVE_RULES) says "follows the rules
    from the first instruction at the 64-bit entry".

kvmm's guest kernel carries it (guest-kernel/src/kvmm_note.S).
"""
from __future__ import annotations

import os
import struct

from kvmm.boot import elf
from kvmm.boot.errors import InvalidImage

KVMM_NOTE_OWNER = b"kvmm"
KVMM_ELFNOTE_PVM_NATIVE = 1
KVMM_PVM_NATIVE_RULES = 0b1          # descriptor bit 0
PVM_MODULE = "/sys/module/kvm_pvm"   # present while the module is loaded


def pvm_host() -> bool:
    """True if this host's /dev/kvm is the software-virtualization module."""
    return os.path.exists(PVM_MODULE)


def runs_natively_on_pvm(image: bytes | memoryview) -> bool:
    """True if `image` is an ELF kernel carrying kvmm's PVM-native note with
    bit 0 set. A bzImage, an ELF without the note, and any malformed image
    (every offset is checked by kvmm.boot.elf) give False."""
    try:
        desc = elf.find_note(image, KVMM_NOTE_OWNER, KVMM_ELFNOTE_PVM_NATIVE)
    except InvalidImage:
        return False
    if desc is None or len(desc) != 4:
        return False
    return bool(struct.unpack("<I", desc)[0] & KVMM_PVM_NATIVE_RULES)


def emulation_warning(image: bytes | memoryview, kernel_name: str, *,
                      pvm: bool | None = None) -> str | None:
    """A one-line warning if `image` will run in the instruction emulator of
    this host's software-virtualization KVM, else None. `pvm` says whether the
    host has that module (default: `pvm_host()`); on hardware KVM there is
    nothing to warn about."""
    if pvm is None:
        pvm = pvm_host()
    if not pvm or runs_natively_on_pvm(image):
        return None
    return (f"warning: {kernel_name} will run in the instruction emulator of this host's "
            "software-virtualization KVM (kvm_pvm, no VMX/SVM), thousands of times slower "
            "than native: a Linux kernel may take hours to boot. Use a kernel built for it, "
            "such as kvmm's guest kernel (the default kernel), or a host with hardware "
            "virtualization (VMX/SVM)")
