"""Where the guest kernel that kvmm boots by default is found.

A wheel carries the kernel built from guest-kernel/ at kvmm/_guest/ (setup.py
builds it); a source checkout (and an editable install) uses the one
`make -C guest-kernel` leaves in guest-kernel/build/.
"""
from __future__ import annotations

import os

KERNEL_NAME = "kvmm-guest.elf"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
PACKAGED_KERNEL = os.path.join(_PACKAGE_DIR, "_guest", KERNEL_NAME)
SOURCE_KERNEL = os.path.join(os.path.dirname(_PACKAGE_DIR), "guest-kernel", "build",
                             KERNEL_NAME)


def default_kernel() -> str:
    """$KVMM_GUEST_KERNEL if set, else the kernel packaged with kvmm if there
    is one, else the source tree's guest-kernel/build/kvmm-guest.elf (which
    may not be built yet)."""
    env = os.environ.get("KVMM_GUEST_KERNEL")
    if env:
        return env
    if os.path.exists(PACKAGED_KERNEL):
        return PACKAGED_KERNEL
    return SOURCE_KERNEL
