"""TAP backend for virtio-net: /dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
(Documentation/networking/tuntap.rst).

`open_tap(name)` attaches to an existing interface (no privilege needed beyond
owning it) or creates one (CAP_NET_ADMIN), and explains every failure in one
sentence before the guest boots. A TAP kvmm created is brought up (pyroute2,
imported only then; a SIOCSIFFLAGS ioctl where pyroute2 is not installed, e.g.
under `python -S`): the kernel refuses writes to a TAP that is down (EIO).
Interfaces that already existed are left as their owner configured them.

Everything here is asked of the kernel in the caller's network namespace
(socket ioctls, not /sys, which shows the namespace it was mounted in).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
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
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
_IFREQ = struct.Struct("16sH22x")   # struct ifreq: name + flags, 40 bytes
_IFREQ_INT = struct.Struct("16si20x")   # struct ifreq: name + ifr_mtu / ifr_ifindex
# include/uapi/linux/sockios.h and if.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
IFF_UP = 0x1
DEFAULT_MTU = 1500                # ETH_DATA_LEN


class TapError(OSError):
    """A TAP interface that cannot be used; the message says what to do."""

    def __str__(self) -> str:
        return self.strerror


def check_name(name: str) -> None:
    from kvmm.spec.devices import check_tap_name
    problem = check_tap_name(name)
    if problem:
        raise TapError(errno.EINVAL, problem)


def interface_index(name: str) -> int:
    """The interface's index in this network namespace, 0 if there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def interface_exists(name: str) -> bool:
    return interface_index(name) != 0


def _ifreq_ioctl(request: int, arg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        return fcntl.ioctl(s.fileno(), request, arg)


def interface_mtu(name: str) -> int:
    """The interface's MTU (SIOCGIFMTU), DEFAULT_MTU if it cannot be read."""
    try:
        return _IFREQ_INT.unpack(_ifreq_ioctl(SIOCGIFMTU, _IFREQ_INT.pack(name.encode(), 0)))[1]
    except OSError:
        return DEFAULT_MTU


def set_link_up(name: str) -> None:
    """Bring interface `name` up: pyroute2 where it is installed, else SIOCSIFFLAGS."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        flags = _IFREQ.unpack(_ifreq_ioctl(SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0)))[1]
        _ifreq_ioctl(SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | IFF_UP))
        return
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=name)
            if not index:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
            ipr.link("set", index=index[0], state="up")
    except OSError:
        raise
    except Exception as e:           # pyroute2's NetlinkError carries the errno in .code
        code = getattr(e, "code", 0) or errno.EIO
        raise OSError(code, os.strerror(code)) from None


def kernel_drops(name: str, index: int | None = None) -> int | None:
    """Frames the kernel dropped because this TAP's queue was full (its
    tx_dropped counter: the queue kvmm leaves frames in while the guest has no
    receive buffers). None where /sys does not show this namespace's interface."""
    base = f"/sys/class/net/{name}"
    try:
        with open(f"{base}/ifindex", "rb") as f:
            if int(f.read()) != (interface_index(name) if index is None else index):
                return None
        with open(f"{base}/statistics/tx_dropped", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class Tap:
    """An open TAP queue. `fd` is non-blocking; frames carry a virtio-net header
    of `vnet_hdr_len` bytes in front. This is the backend interface of
    kvmm.virtio.net.Net: `fd`, `name`, `set_offload`, `mtu`, `dropped`."""

    def __init__(self, fd: int, name: str, created: bool, vnet_hdr_len: int):
        self.fd = fd
        self.name = name
        self.created = created
        self.vnet_hdr_len = vnet_hdr_len
        self.index = interface_index(name)   # now, before the seccomp filters (no socket later)

    def set_offload(self, flags: int) -> None:
        """Which offloads the kernel may hand us on read (TUN_F_* bits); the
        guest must have accepted the matching VIRTIO_NET_F_GUEST_* features."""
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def mtu(self) -> int:
        return interface_mtu(self.name)

    def dropped(self) -> int | None:
        return kernel_drops(self.name, self.index)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_tap(name: str, vnet_hdr_len: int = 12, offload: int = 0, up: bool = True) -> Tap:
    """Open TAP interface `name`, creating it when it does not exist (and then,
    with `up`, bringing it up)."""
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
        if up and not existed:
            try:
                set_link_up(name)
            except OSError as e:
                raise TapError(e.errno or errno.EIO, f"created TAP {name} but could not bring "
                               f"it up ({e.strerror or e}): bring it up yourself (ip link set "
                               f"{name} up) or run as root") from None
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
