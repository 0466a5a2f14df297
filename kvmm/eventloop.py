"""The per-guest I/O thread: an epoll loop with readers and timers.

Devices hand it file descriptors (ioeventfds, TAP fds, the console's stdin)
with a callback, and timers (rate-limit wake-ups). All device work that is
not a register access runs here, off the vCPU threads, so a vCPU never
blocks on a disk or a network.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import select
import threading
import time

# timerfd (Linux 2.6.25): epoll's own timeout has a 1 ms granularity, which a
# rate limiter waking every few ms would turn into a rate several percent low.
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    """struct itimerspec (timerfd_create(2))."""
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_timerfd_create = _libc.timerfd_create
_timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_timerfd_settime = _libc.timerfd_settime
_timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                             ctypes.c_void_p]


def _timerfd() -> int:
    fd = _timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "timerfd_create failed")
    return fd


class Timer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, name: str = "kvmm-io"):
        self.name = name
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._pending: list[Callable[[], None]] = []
        self._soon: list[Callable[[], None]] = []     # call_soon, from the loop thread
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._timerfd = _timerfd()
        self._epoll.register(self._timerfd, select.EPOLLIN)
        self._armed: float | None = None     # deadline the timerfd is set for
        self._running = False
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    # Registration (any thread). -------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._pending.append(callback)
        self._wakeup()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` on the loop after `delay` seconds (call from the loop thread,
        or through call_soon_threadsafe)."""
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        if threading.current_thread() is not self._thread:
            self._wakeup()
        return timer

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the loop after the callbacks of the descriptors the
        last poll found ready, and before the next poll waits (a device yielding
        after its budget); no timer involved. From another thread this wakes
        the loop, like call_soon_threadsafe."""
        if threading.current_thread() is self._thread:
            self._soon.append(callback)
        else:
            self.call_soon_threadsafe(callback)

    def _wakeup(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except (BlockingIOError, OSError):
            pass

    # Running. --------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wakeup()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self._epoll.close()
        os.close(self._wake)
        os.close(self._timerfd)

    def _arm(self, when: float) -> None:
        """Set the timerfd to fire at `when` (time.monotonic seconds)."""
        if when == self._armed:
            return
        sec = int(when)
        nsec = int((when - sec) * 1e9)
        if sec == 0 and nsec == 0:
            nsec = 1                    # an all-zero time would disarm the timer
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, nsec))
        if _timerfd_settime(self._timerfd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed = when

    def _run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as e:  # a failing device must not take the loop down
            import logging
            logging.getLogger(__name__).exception("%s: callback %r failed", self.name,
                                                  callback)
            self.errors.append(e)

    def run(self) -> None:
        from kvmm.procname import set_thread_name
        set_thread_name(self.name)
        self._running = True
        while self._running:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if self._timers:
                self._arm(self._timers[0][0])
            try:
                events = self._epoll.poll(0 if self._soon else -1)
            except InterruptedError:
                continue
            for fd, _mask in events:
                if fd == self._wake or fd == self._timerfd:
                    try:
                        os.read(fd, 8)
                    except BlockingIOError:
                        pass
                    if fd == self._timerfd:
                        self._armed = None
                    continue
                callback = self._readers.get(fd)
                if callback is not None:
                    self._run_callback(callback)
            if self._soon:
                soon, self._soon = self._soon, []
                for callback in soon:
                    self._run_callback(callback)
            if self._pending:
                with self._lock:
                    pending, self._pending = self._pending, []
                for callback in pending:
                    self._run_callback(callback)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                if not timer.cancelled:
                    self._run_callback(timer.callback)
