"""The per-guest I/O thread: an epoll loop with readers and timers.

Devices hand it file descriptors (ioeventfds, TAP fds, the console's stdin)
with a callback, and timers (rate-limit wake-ups). All device work that is
not a register access runs here, off the vCPU threads, so a vCPU never
blocks on a disk or a network.
"""
from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time


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
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
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

    def _run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as e:  # a failing device must not take the loop down
            import logging
            logging.getLogger(__name__).exception("%s: callback %r failed", self.name,
                                                  callback)
            self.errors.append(e)

    def run(self) -> None:
        self._running = True
        while self._running:
            timeout = -1.0
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, _mask in events:
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                callback = self._readers.get(fd)
                if callback is not None:
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
