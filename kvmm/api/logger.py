"""Firecracker's logger for kvmm's own log records.

Firecracker (src/vmm/src/logger/logging.rs) writes one line per record,

    2018-11-07T05:34:25.180751152 [instance-id:thread:LEVEL:file:line] message

where `:LEVEL` appears with show_level and `:file:line` with show_log_origin,
to a file or a FIFO opened non-blocking: a record the destination cannot take
is dropped and counted, never waited for. `configure` sets that up for the
`kvmm` logger family, with the settings of Firecracker's `--level`,
`--log-path`, `--show-level`, `--show-log-origin`, `--module` and of the
PUT /logger body.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import threading
import time

LOGGER_NAME = "kvmm"
DEFAULT_INSTANCE_ID = "anonymous-instance"     # Firecracker's DEFAULT_INSTANCE_ID

TRACE = 5                                      # below logging.DEBUG
OFF = logging.CRITICAL + 10                    # above every level a record has
logging.addLevelName(TRACE, "TRACE")

# Firecracker's LevelFilter, parsed case-insensitively ("warn" and "warning"
# are both accepted).
LEVELS = {
    "off": OFF,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
VALID_LEVELS = "Error, Warning, Info, Debug, Trace, Off"

# The level names Firecracker prints (the `log` crate's Level Display).
_LEVEL_TAGS = {logging.CRITICAL: "ERROR", logging.ERROR: "ERROR", logging.WARNING: "WARN",
               logging.INFO: "INFO", logging.DEBUG: "DEBUG", TRACE: "TRACE"}

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_level(value: str) -> int:
    """The logging level for a Firecracker level name (any case)."""
    if not isinstance(value, str) or value.lower() not in LEVELS:
        raise ValueError(f"level: {value!r} is not a log level; valid values: {VALID_LEVELS}")
    return LEVELS[value.lower()]


def level_tag(levelno: int) -> str:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                      logging.DEBUG):
        if levelno >= threshold:
            return _LEVEL_TAGS[threshold]
    return "TRACE"


def local_timestamp(ns: int) -> str:
    """`%Y-%m-%dT%H:%M:%S.%f` in local time with nanoseconds, as Firecracker's
    LocalTime prints it."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(sec)) + f".{frac:09d}"


class FirecrackerFormatter(logging.Formatter):
    def __init__(self, instance_id: str = DEFAULT_INSTANCE_ID, show_level: bool = False,
                 show_log_origin: bool = False):
        super().__init__()
        self.instance_id = instance_id
        self.show_level = show_level
        self.show_log_origin = show_log_origin

    def format(self, record: logging.LogRecord) -> str:
        tag = f"{self.instance_id}:{record.threadName or '-'}"
        if self.show_level:
            tag += f":{level_tag(record.levelno)}"
        if self.show_log_origin:
            tag += f":{_origin(record.pathname)}:{record.lineno}"
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        ns = getattr(record, "created_ns", None) or int(record.created * 1e9)
        return f"{local_timestamp(ns)} [{tag}] {message}"


def _origin(pathname: str) -> str:
    """A source path relative to the directory holding the kvmm package
    (`kvmm/virtio/blk/device.py`), like Firecracker's crate-relative paths."""
    try:
        rel = os.path.relpath(pathname, _PACKAGE_ROOT)
    except ValueError:
        return pathname
    return pathname if rel.startswith("..") else rel


class ModuleFilter(logging.Filter):
    """Firecracker's `module`: only records whose logger name starts with it.
    A Rust-style path (`kvmm::virtio`) is taken as `kvmm.virtio`."""

    def __init__(self, module: str):
        super().__init__()
        self.module = module.replace("::", ".")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(self.module)


class NonBlockingFileHandler(logging.Handler):
    """Writes each formatted record, whole, with one non-blocking write to a file
    or a FIFO; a record that does not fit is dropped and counted in `missed`.
    A FIFO without a reader yet is opened again for each record."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.missed = 0
        self._fd: int | None = None
        self._fd_lock = threading.Lock()
        self._open(create=True)

    def _open(self, create: bool) -> None:
        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_APPEND
        try:
            fd = os.open(self.path, flags | (os.O_CREAT if create else 0), 0o600)
        except OSError as e:
            if e.errno == errno.ENXIO:       # a FIFO nobody reads yet
                return
            if not create:
                return
            raise OSError(e.errno, f"log_path {self.path}: cannot open for writing: "
                                   f"{e.strerror}; give an existing file, a FIFO, or a "
                                   f"path in a writable directory") from None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            os.close(fd)
            raise OSError(errno.EINVAL, f"log_path {self.path}: not a file or a FIFO")
        self._fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        with self._fd_lock:
            if self._fd is None:
                self._open(create=False)
                if self._fd is None:
                    self.missed += 1
                    return
            try:
                if os.write(self._fd, data) != len(data):
                    self.missed += 1         # a pipe took part of an over-long line
            except BlockingIOError:
                self.missed += 1
            except BrokenPipeError:
                self.missed += 1
                os.close(self._fd)
                self._fd = None

    def close(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        super().close()


_installed: logging.Handler | None = None
_install_lock = threading.Lock()


def configure(log_path: str | None, level: str = "Info", show_level: bool = False,
              show_log_origin: bool = False, module: str | None = None,
              instance_id: str | None = None) -> logging.Handler:
    """Send the `kvmm` loggers' records to `log_path` (a file, created if
    missing, or a FIFO; None: standard output) in Firecracker's line format.
    Replaces what an earlier call installed. Raises ValueError naming the field
    for a bad level, OSError naming the path for one that cannot be opened."""
    levelno = parse_level(level)
    if module is not None and not isinstance(module, str):
        raise ValueError(f"module: must be a string, not {module!r}")
    if log_path is None:
        handler: logging.Handler = logging.StreamHandler()
        handler.stream = sys.stdout
    else:
        handler = NonBlockingFileHandler(log_path)
    handler.setFormatter(FirecrackerFormatter(instance_id or DEFAULT_INSTANCE_ID,
                                              show_level, show_log_origin))
    handler.setLevel(levelno)
    if module:
        handler.addFilter(ModuleFilter(module))
    global _installed
    with _install_lock:
        logger = logging.getLogger(LOGGER_NAME)
        if _installed is not None:
            logger.removeHandler(_installed)
            _installed.close()
        logger.addHandler(handler)
        logger.setLevel(levelno)
        _installed = handler
    return handler


def active() -> bool:
    """Whether `configure` has installed a handler."""
    return _installed is not None


def reset() -> None:
    """Remove what `configure` installed (the `kvmm` logger's level goes back
    to unset)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            logger = logging.getLogger(LOGGER_NAME)
            logger.removeHandler(_installed)
            logger.setLevel(logging.NOTSET)
            _installed.close()
            _installed = None

