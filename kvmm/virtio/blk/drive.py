"""Drive options and opened disk images, checked before the guest boots.

`parse_drive("path=disk.img,ro,id=root,serial=S")` gives a DriveConfig;
`open_drives(configs)` opens, checks and locks every image, or raises one
DriveError (a one-line message naming the drive and what to do) after closing
whatever it had opened. Checks: the image exists, is a regular file or block
device (not a directory), can be read, has a size that is a non-zero multiple
of 512, is not given twice (same st_dev/st_ino), is writable unless `ro` is
given, and is not in use: an exclusive advisory lock (fcntl.flock), shared
for read-only drives, keeps two monitors from writing one image.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from kvmm.quota.limits import LimitError, check_shorthand, shorthand_keys
from kvmm.virtio.errors import DriveError

SECTOR_SIZE = 512            # virtio-blk sectors are always 512 bytes (§5.2.4)
SECTOR_SHIFT = 9
SERIAL_MAX = 20              # VIRTIO_BLK_ID_BYTES (§5.2.6: GET_ID, "up to 20 bytes")
DRIVE_SYNTAX = "path=IMG[,ro][,id=NAME][,serial=S][,bw=B/s][,bw_burst=B][,iops=N][,iops_burst=N]"
ID_MAX = 32
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_PROBE_LEN = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none); raises OSError."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _valid_id(text: str) -> bool:
    return (0 < len(text) <= ID_MAX and text[0].isascii() and text[0].isalnum()
            and all(c in _ID_CHARS for c in text))


class DriveConfig:
    """One --drive option: the image, read-only or not, an id and a serial."""

    __slots__ = ("path", "read_only", "id", "serial", "limits")

    def __init__(self, path: str, read_only: bool = False, id: str | None = None,
                 serial: str | None = None, limits: dict | None = None):
        self.path = path
        self.read_only = read_only
        self.id = id
        self.serial = serial
        self.limits = limits or {}      # rate-limit shorthands (kvmm.quota.limits)

    def _key(self) -> tuple:
        return (self.path, self.read_only, self.id, self.serial)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DriveConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"DriveConfig(path={self.path!r}, read_only={self.read_only}, id={self.id!r}, "
                f"serial={self.serial!r})")


LIMIT_KEYS = shorthand_keys()      # bw=, iops=, ... (kvmm.quota.limits)


def _split_options(text: str) -> list[str]:
    """Split at commas; ",," is a literal comma (QEMU's escape)."""
    items, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text.startswith(",,", i):
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return items


def parse_drive(text: str) -> DriveConfig:
    """Parse the CLI form `path=IMG[,ro][,id=NAME][,serial=S]` (",," escapes a comma)."""
    if not text.strip():
        raise DriveError(f"empty drive option; expected {DRIVE_SYNTAX}")
    seen: dict[str, str] = {}
    for item in _split_options(text):
        key, eq, value = item.partition("=")
        if not eq:
            if key == "ro":
                value = "on"
            else:
                raise DriveError(f"drive option {item!r} in {text!r} is not understood; "
                                 f"expected {DRIVE_SYNTAX}")
        if key not in ("path", "ro", "id", "serial") + LIMIT_KEYS:
            raise DriveError(f"unknown drive option {key!r} in {text!r}; expected {DRIVE_SYNTAX}")
        if key in seen:
            raise DriveError(f"drive option {key!r} given twice in {text!r}")
        seen[key] = value
    path = seen.get("path")
    if not path:
        raise DriveError(f"drive {text!r} has no image; expected {DRIVE_SYNTAX}")
    ro = seen.get("ro", "off")
    if ro not in ("on", "off"):
        raise DriveError(f"drive {text!r}: ro takes no value (or on/off), not {ro!r}")
    drive_id = seen.get("id")
    if drive_id is not None and not _valid_id(drive_id):
        raise DriveError(f"drive id {drive_id!r} must be 1-32 letters, digits, '_', '.' or "
                         "'-', starting with a letter or digit")
    serial = seen.get("serial")
    if serial is not None:
        if not serial.isascii() or not serial.isprintable() or not serial:
            raise DriveError(f"drive serial {serial!r} must be printable ASCII")
        if len(serial) > SERIAL_MAX:
            raise DriveError(f"drive serial {serial!r} is {len(serial)} characters; "
                             f"virtio-blk allows at most {SERIAL_MAX}")
    limits = {k: seen[k] for k in LIMIT_KEYS if k in seen}
    if limits:
        try:
            check_shorthand(limits)
        except LimitError as e:
            raise DriveError(f"drive {text!r}: {e}") from None
    return DriveConfig(path=path, read_only=ro == "on", id=drive_id, serial=serial,
                       limits=limits)


class Drive:
    """An opened, checked and locked disk image. `fd` is what the device reads
    and writes with os.preadv/os.pwritev; `capacity` is in 512-byte sectors."""

    def __init__(self, config: DriveConfig, drive_id: str, fd: int, size: int,
                 st_dev: int, st_ino: int, is_block_device: bool):
        self.config = config
        self.id = drive_id
        self.path = config.path
        self.read_only = config.read_only
        self.serial = config.serial if config.serial is not None else drive_id
        self.fd = fd
        self.size = size
        self.capacity = size >> SECTOR_SHIFT
        self.st_dev = st_dev
        self.st_ino = st_ino
        self.is_block_device = is_block_device
        self.can_discard = False
        self.can_write_zeroes = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)     # releases the flock
            self.fd = -1

    def __enter__(self) -> Drive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Drive(id={self.id!r}, path={self.path!r}, {'ro' if self.read_only else 'rw'}, "
                f"{self.capacity} sectors)")

    def probe_fallocate(self) -> None:
        """Find out which of DISCARD (punch hole) and WRITE_ZEROES (zero range) the
        image's file system does, without touching the image: both are tried on
        an unnamed O_TMPFILE in the image's directory. Where no such file can be
        made (directory not writable, file system without O_TMPFILE), punch hole
        is tried past the image's end, which allocates nothing, and WRITE_ZEROES
        is not offered."""
        if self.read_only or self.is_block_device:
            return
        keep = FALLOC_FL_KEEP_SIZE
        directory = os.path.dirname(os.path.realpath(self.path)) or "."
        try:
            tmp = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            tmp = -1
        if tmp < 0:
            probe_at = (self.size + _PROBE_LEN - 1) // _PROBE_LEN * _PROBE_LEN + _PROBE_LEN
            self.can_discard = _fallocate_works(self.fd, FALLOC_FL_PUNCH_HOLE | keep,
                                                probe_at, _PROBE_LEN)
            return
        try:
            try:
                os.posix_fallocate(tmp, 0, 4 * _PROBE_LEN)
            except OSError:
                os.ftruncate(tmp, 4 * _PROBE_LEN)
            self.can_discard = _fallocate_works(tmp, FALLOC_FL_PUNCH_HOLE | keep,
                                                _PROBE_LEN, _PROBE_LEN)
            self.can_write_zeroes = _fallocate_works(tmp, FALLOC_FL_ZERO_RANGE | keep,
                                                     2 * _PROBE_LEN, _PROBE_LEN)
        finally:
            os.close(tmp)


def _fallocate_works(fd: int, mode: int, offset: int, length: int) -> bool:
    try:
        fallocate(fd, mode, offset, length)
    except OSError:
        return False
    return True


def _label(config: DriveConfig, drive_id: str) -> str:
    return f"drive {drive_id!r} ({config.path})"


def open_drive(config: DriveConfig, drive_id: str) -> Drive:
    """Open, check and lock one image (see the module docstring)."""
    label = _label(config, drive_id)
    path = config.path
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DriveError(f"{label}: the image does not exist") from None
    except OSError as e:
        raise DriveError(f"{label}: cannot look at the image ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DriveError(f"{label}: is a directory, not a disk image")
    is_blk = stat.S_ISBLK(st.st_mode)
    if not (stat.S_ISREG(st.st_mode) or is_blk):
        raise DriveError(f"{label}: is neither a regular file nor a block device")
    if not st.st_mode & 0o444 or not os.access(path, os.R_OK):
        raise DriveError(f"{label}: cannot be read (no read permission); "
                         "fix its permissions")
    if not config.read_only and os.statvfs(path).f_flag & os.ST_RDONLY:
        raise DriveError(f"{label}: the image is on a read-only file system; "
                         "add ',ro' to use it read-only")
    if not config.read_only and (not st.st_mode & 0o222 or not os.access(path, os.W_OK)):
        raise DriveError(f"{label}: the image is read-only (no write permission); "
                         "add ',ro' to use it read-only or make it writable")
    flags = (os.O_RDONLY if config.read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise DriveError(f"{label}: the image is on a read-only file system; "
                             "add ',ro' to use it read-only") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            what = "read" if config.read_only else "read and write"
            raise DriveError(f"{label}: permission denied to {what} the image"
                             + ("" if config.read_only else "; add ',ro' if it is read-only")
                             ) from None
        raise DriveError(f"{label}: cannot open the image ({e.strerror})") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise DriveError(f"{label}: the image changed while it was being opened; try again")
        size = os.lseek(fd, 0, os.SEEK_END) if is_blk else fst.st_size
        if size == 0:
            raise DriveError(f"{label}: the image is empty; give it a size "
                             "(e.g. truncate -s 1G IMG)")
        if size % SECTOR_SIZE:
            raise DriveError(f"{label}: size {size} is not a multiple of {SECTOR_SIZE} bytes; "
                             f"resize it (truncate -s {(size + 511) // 512 * 512} IMG)")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if config.read_only else fcntl.LOCK_EX)
                        | fcntl.LOCK_NB)
        except BlockingIOError:
            hint = ("another process has it open read-write"
                    if config.read_only else
                    "another process (a second monitor?) has it open; stop it, or give "
                    "',ro' on every drive that shares the image")
            raise DriveError(f"{label}: the image is locked: {hint}") from None
        drive = Drive(config, drive_id, fd, size, st.st_dev, st.st_ino, is_blk)
        drive.probe_fallocate()
        return drive
    except BaseException:
        os.close(fd)
        raise


def open_drives(configs: list[DriveConfig]) -> list[Drive]:
    """Open every drive, or none: raise the first DriveError after closing the rest.

    Drives without an id get `drive<N>` (N = position); ids must be unique.
    """
    drives: list[Drive] = []
    ids: dict[str, DriveConfig] = {}
    files: dict[tuple[int, int], str] = {}
    try:
        for n, config in enumerate(configs):
            drive_id = config.id if config.id is not None else f"drive{n}"
            if drive_id in ids:
                raise DriveError(f"drive id {drive_id!r} is used by both {ids[drive_id].path} "
                                 f"and {config.path}; give each drive its own id=")
            ids[drive_id] = config
            # Same-file check before opening: a second flock on it would look like
            # another process's lock.
            try:
                st = os.stat(config.path)
                key = (st.st_dev, st.st_ino)
            except OSError:
                key = None
            if key is not None and key in files:
                raise DriveError(f"{_label(config, drive_id)}: the same file as drive "
                                 f"{files[key]!r}; a disk image can back only one drive")
            drive = open_drive(config, drive_id)
            drives.append(drive)
            files[(drive.st_dev, drive.st_ino)] = drive_id
    except BaseException:
        for drive in drives:
            drive.close()
        raise
    return drives
