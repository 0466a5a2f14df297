"""TAP backend for virtio-net: /dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
(Documentation/networking/tuntap.rst).

`open_tap(name)` attaches to an existing interface (no privilege needed beyond
owning it) or creates one (CAP_NET_ADMIN), and explains every failure in one
sentence before the guest boots.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

TUN_DEVICE = "/dev/net/tun"
IFNAMSIZ = 16                     # include/uapi/linux/if.h, with the NUL
# include/uapi/linux/if_tun.h
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_ONE_QUEUE = 0x2000
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETIFF = 0x800454D2
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_UFO = 0x10
_IFREQ = struct.Struct("16sH22x")   # struct ifreq: name + flags, 40 bytes


class TapError(OSError):
    """A TAP interface that cannot be used; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror


def check_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise TapError(errno.EINVAL, f"TAP name {name!r} must be 1 to {IFNAMSIZ - 1} bytes "
                                     "(the kernel's IFNAMSIZ)")
    if "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise TapError(errno.EINVAL, f"TAP name {name!r} may not contain '/' or spaces")


def interface_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


class Tap:
    """An open TAP queue. `fd` is non-blocking; frames carry a virtio-net header
    of `vnet_hdr_len` bytes in front."""

    def __init__(self, fd: int, name: str, created: bool, vnet_hdr_len: int):
        self.fd = fd
        self.name = name
        self.created = created
        self.vnet_hdr_len = vnet_hdr_len

    def set_offload(self, flags: int) -> None:
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tap(name: str, vnet_hdr_len: int = 12, offload: int = 0) -> Tap:
    """Open TAP interface `name`, creating it when it does not exist."""
    check_name(name)
    existed = interface_exists(name)
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapError(errno.ENOENT, f"{TUN_DEVICE} does not exist: load the tun module "
                                     "(modprobe tun)") from None
    except PermissionError:
        raise TapError(errno.EACCES, f"no permission to open {TUN_DEVICE}: run as root or "
                                     "make it accessible to this user") from None
    try:
        req = _IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, req)
        except OSError as e:
            raise _explain(name, existed, e) from None
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_len))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
    except BaseException:
        os.close(fd)
        raise
    return Tap(fd, name, not existed, vnet_hdr_len)


def _explain(name: str, existed: bool, e: OSError) -> TapError:
    if e.errno == errno.EPERM:
        if existed:
            return TapError(e.errno, f"TAP {name} exists but belongs to another user: create "
                                     f"it for this user (ip tuntap add {name} mode tap user "
                                     "$USER) or run as root")
        return TapError(e.errno, f"TAP {name} does not exist and creating it needs "
                                 f"CAP_NET_ADMIN: create it first (ip tuntap add {name} mode "
                                 "tap user $USER) or run as root")
    if e.errno == errno.EBUSY:
        return TapError(e.errno, f"TAP {name} is already in use by another process (a TAP "
                                 "without multi-queue has one user)")
    if e.errno == errno.EINVAL and existed:
        return TapError(e.errno, f"interface {name} exists but is not a TAP device with "
                                 "virtio-net headers; give the name of a TAP interface")
    return TapError(e.errno, f"cannot attach to TAP {name}: {os.strerror(e.errno)}")
