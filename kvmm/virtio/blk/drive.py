"""Opened disk images, checked before the guest boots.

A drive is configured by a kvmm.spec.DriveSpec; `open_drives(specs)` opens,
checks and locks every image, or raises one
DriveError (a one-line message naming the drive and what to do) after closing
whatever it had opened. Checks: the image exists, is a regular file or block
device (not a directory), can be read, has a size that is a multiple of 512
(an empty image is a disk of no sectors, as Firecracker allows: orchestrators
attach empty placeholders and change their path later), is not given twice (same st_dev/st_ino), is writable unless `ro` is
given, and is not in use: an exclusive advisory lock (fcntl.flock), shared
for read-only drives, keeps two monitors from writing one image.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from kvmm.virtio.errors import DriveError

SECTOR_SIZE = 512            # virtio-blk sectors are always 512 bytes (§5.2.4)
SECTOR_SHIFT = 9

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


class Drive:
    """An opened, checked and locked disk image. `fd` is what the device reads
    and writes with os.preadv/os.pwritev; `capacity` is in 512-byte sectors."""

    def __init__(self, spec, fd: int, size: int, st_dev: int, st_ino: int,
                 is_block_device: bool):
        self.spec = spec                # kvmm.spec.DriveSpec
        self.id = spec.drive_id
        self.path = spec.path_on_host
        self.read_only = spec.is_read_only
        self.serial = spec.serial if spec.serial is not None else spec.drive_id
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


def open_drive(spec) -> Drive:
    """Open, check and lock the image of one kvmm.spec.DriveSpec (see the module
    docstring)."""
    label = spec.label
    path = spec.path_on_host
    read_only = spec.is_read_only
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
    if not read_only and os.statvfs(path).f_flag & os.ST_RDONLY:
        raise DriveError(f"{label}: the image is on a read-only file system; "
                         "add ',ro' to use it read-only")
    if not read_only and (not st.st_mode & 0o222 or not os.access(path, os.W_OK)):
        raise DriveError(f"{label}: the image is read-only (no write permission); "
                         "add ',ro' to use it read-only or make it writable")
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise DriveError(f"{label}: the image is on a read-only file system; "
                             "add ',ro' to use it read-only") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            what = "read" if read_only else "read and write"
            raise DriveError(f"{label}: permission denied to {what} the image"
                             + ("" if read_only else "; add ',ro' if it is read-only")
                             ) from None
        raise DriveError(f"{label}: cannot open the image ({e.strerror})") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise DriveError(f"{label}: the image changed while it was being opened; try again")
        size = os.lseek(fd, 0, os.SEEK_END) if is_blk else fst.st_size
        if size % SECTOR_SIZE:
            raise DriveError(f"{label}: size {size} is not a multiple of {SECTOR_SIZE} bytes; "
                             f"resize it (truncate -s {(size + 511) // 512 * 512} IMG)")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX)
                        | fcntl.LOCK_NB)
        except BlockingIOError:
            hint = ("another process has it open read-write"
                    if read_only else
                    "another process (a second monitor?) has it open; stop it, or give "
                    "',ro' on every drive that shares the image")
            raise DriveError(f"{label}: the image is locked: {hint}") from None
        drive = Drive(spec, fd, size, st.st_dev, st.st_ino, is_blk)
        drive.probe_fallocate()
        return drive
    except BaseException:
        os.close(fd)
        raise


def open_drives(specs: list) -> list[Drive]:
    """Open every drive (kvmm.spec.DriveSpec, ids already unique), or none:
    raise the first DriveError after closing the rest."""
    drives: list[Drive] = []
    files: dict[tuple[int, int], str] = {}
    try:
        for spec in specs:
            # Same-file check before opening: a second flock on it would look like
            # another process's lock.
            try:
                st = os.stat(spec.path_on_host)
                key = (st.st_dev, st.st_ino)
            except OSError:
                key = None
            if key is not None and key in files:
                raise DriveError(f"{spec.label}: the same file as drive {files[key]!r}; a "
                                 "disk image can back only one drive")
            drive = open_drive(spec)
            drives.append(drive)
            files[(drive.st_dev, drive.st_ino)] = drive.id
    except BaseException:
        for drive in drives:
            drive.close()
        raise
    return drives
