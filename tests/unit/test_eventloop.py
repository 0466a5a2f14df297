"""The I/O thread's EventLoop: readers, call_soon, timers."""
import os
import threading
import time

from kvmm.eventloop import EventLoop


def test_call_soon_needs_no_timer_and_lets_ready_readers_in_between():
    loop = EventLoop("test-io")
    r, w = os.pipe()
    os.set_blocking(r, False)
    order = []
    done = threading.Event()
    steps = [0]

    def reader():
        os.read(r, 100)
        order.append("reader")

    def step():
        steps[0] += 1
        order.append("soon")
        if steps[0] == 1:
            os.write(w, b"x")              # a reader becomes ready meanwhile
        if steps[0] < 5:
            loop.call_soon(step)           # from the loop thread: no timer, no wake-up
        else:
            done.set()

    loop.add_reader(r, reader)
    loop.start()
    try:
        loop.call_soon(step)               # from another thread: wakes the loop
        assert done.wait(5)
        assert order[:3] == ["soon", "reader", "soon"] and order.count("soon") == 5
        assert not loop._timers
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_timers_fire_in_order_and_not_early():
    loop = EventLoop("test-io")
    fired = []
    done = threading.Event()
    loop.start()
    try:
        t0 = time.monotonic()
        loop.call_soon_threadsafe(lambda: loop.call_later(0.03, lambda: (
            fired.append(("b", time.monotonic() - t0)), done.set())))
        loop.call_soon_threadsafe(lambda: loop.call_later(0.01, lambda: fired.append(
            ("a", time.monotonic() - t0))))
        assert done.wait(5)
        assert [name for name, _t in fired] == ["a", "b"]
        assert fired[0][1] >= 0.01 and fired[1][1] >= 0.03
    finally:
        loop.close()
