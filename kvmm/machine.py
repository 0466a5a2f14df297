"""A built VM and its control: the KVM objects, guest memory, buses and
devices, the vCPU threads, and the pause/resume/stop machinery the vCPU
threads answer to. kvmm.builder makes one; kvmm.vmm (the lifecycle) drives it.
"""
from __future__ import annotations

import os
import threading
import time

# The C half of `signal` (the Python half imports enum, which costs more than
# booting a VM); only pthread_kill, signal and getsignal are used.
import _signal as signal  # noqa: I001

from kvmm.cleanup import Cleanup
from kvmm.devices.bus import Bus
from kvmm.devices.serial import ConsoleSink
from kvmm.ioctl import numbers as n
from kvmm.memory import GuestMemory
from kvmm.vcpu.dump import format_registers
from kvmm.vcpu.runloop import VcpuThread

# Exit statuses of the monitor itself (the guest's own status is 0-255 via port 0xf4).
EXIT_CONFIG = 2
EXIT_TIMEOUT = 124
EXIT_CRASH = 125
EXIT_MONITOR = 126
TSS_ADDR = 0xFFFBD000          # three pages KVM/VMX needs below 4 GiB (Firecracker's choice)
KICK_SIGNAL = signal.SIGUSR1


class StopReason:
    """Why a machine stopped: `kind` is "exit", "reset", "crash", "timeout",
    "stopped" or "error"; `status` is the exit status kvmm reports."""
    __slots__ = ("kind", "status", "message")

    def __init__(self, kind: str, status: int, message: str = ""):
        self.kind = kind
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"StopReason({self.kind!r}, {self.status}, {self.message!r})"


def install_kick_handler() -> None:
    """vCPU threads are kicked out of KVM_RUN with a signal; it needs a handler
    (the default action would kill the process)."""
    try:
        if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
            signal.signal(KICK_SIGNAL, lambda *_: None)
    except ValueError:
        pass  # not the main thread; the embedding program must have set one


class Machine:
    """A live VM. kvmm.builder.build makes it; `start()`, then `wait()`."""

    def __init__(self, spec, start_time: float | None = None,
                 vcpu_name: str = "kvmm-vcpu{}"):
        self.spec = spec                # the kvmm.spec.VmSpec it was built from
        self.cpu_pin = spec.host.cpu_pin
        self.vcpu_name = vcpu_name      # thread name, formatted with the vCPU index
        self.created = time.monotonic() if start_time is None else start_time
        self.stopping = False
        self.stop_reason: StopReason | None = None
        self._stopped = threading.Event()
        self._paused = False
        self._pause_cond = threading.Condition()
        self._parked = 0
        self.threads: list[VcpuThread] = []
        self.vcpus = []
        self.report_lines: list[str] = []
        self._cleanup = Cleanup()
        self.pio_bus = Bus("port I/O", 0x10000)
        self.mmio_bus = Bus("MMIO", 1 << 64)
        self.loop = None
        self.mem: GuestMemory | None = None
        self.vm = None
        self.kvm = None
        self.pvm = False
        self.boot_timer = None
        self.serial = None
        self.i8042 = None
        self.on_ready = None            # called with the boot timer's seconds
        self.on_stop = None             # called once with the StopReason
        self.build_started: float | None = None    # time.monotonic() when the build began
        self.virtio_devices: list = []
        self.quota = None          # kvmm.quota.guest.GuestQuota, when there are devices
        self.cgroup = None         # kvmm.quota.cgroup.GuestCgroup, when limits ask for one

    # Life cycle. -----------------------------------------------------------
    def start(self) -> None:
        install_kick_handler()
        for vcpu in self.vcpus:
            t = VcpuThread(self, vcpu, self.vcpu_name.format(vcpu.index))
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def wait(self, timeout: float | None = None) -> StopReason:
        """Block until the guest stops (or `timeout` passes: then stop it)."""
        if not self._stopped.wait(timeout):
            self._timeout(timeout)
        self._join()
        if self.console is not None:
            self.console.flush()
        assert self.stop_reason is not None
        return self.stop_reason

    def _timeout(self, timeout: float | None) -> None:
        paused = self.pause(wait=2.0)
        lines = [f"the guest did not finish within {timeout:g} s; stopped it"]
        if paused:
            lines += [format_registers(v) for v in self.vcpus]
        else:
            lines.append("(vCPUs did not stop for a register dump)")
        lines += self.console_tail()
        self.request_stop(StopReason("timeout", EXIT_TIMEOUT, "\n".join(lines)))
        self.resume()

    def _join(self) -> None:
        self._kick_all()
        for t in self.threads:
            t.join(timeout=5)

    def close(self) -> None:
        if not self.stopping:
            self.request_stop(StopReason("stopped", 0, "closed"))
        self._join()
        self._cleanup.close()

    def release_for_exit(self) -> None:
        """Before the process exits: stop, flush, and undo only what process exit
        would not (terminal mode, cgroups); fds and guest RAM go with the process.

        Destroying a VM with an in-kernel irqchip and PIT takes the kernel
        10-20 ms (grace periods). A child process keeps the KVM fds open until
        this process has exited and then drops the last references, so the
        monitor's exit (and its status) does not wait for that."""
        if not self.stopping:
            self.request_stop(StopReason("stopped", 0, "closed"))
        if self.console is not None:
            self.console.flush()
        self._cleanup.close(essential_only=True)
        self._hand_off_teardown()

    def _hand_off_teardown(self) -> None:
        keep = [fd for fd in [getattr(self.kvm, "fd", -1), getattr(self.vm, "fd", -1)]
                + [v.fd for v in self.vcpus] if fd >= 0]
        if not keep:
            return
        try:
            rfd, wfd = os.pipe()
            pid = os.fork()
        except OSError:
            return          # the process exit will tear the VM down instead
        if pid == 0:        # the child: hold the KVM fds until the parent is gone
            try:
                os.close(wfd)
                keep = sorted(keep + [rfd])
                low = 0
                for fd in keep:
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 20)
                os.read(rfd, 1)         # EOF when the parent has exited
            finally:
                os._exit(0)
        os.close(rfd)       # wfd stays open until this process exits

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Control from other threads. -------------------------------------------
    def _kick_all(self) -> None:
        for vcpu in self.vcpus:
            if vcpu.fd >= 0 and vcpu.run_struct is not None:
                vcpu.set_immediate_exit(True)
        for t in self.threads:
            if t.is_alive() and t.ident is not None:
                try:
                    signal.pthread_kill(t.ident, KICK_SIGNAL)
                except OSError:
                    pass  # the thread has just ended

    def pause(self, wait: float = 5.0) -> bool:
        """Stop all vCPUs outside KVM_RUN; True once every running one is parked."""
        with self._pause_cond:
            self._paused = True
        self._kick_all()
        deadline = time.monotonic() + wait
        with self._pause_cond:
            while self._parked < sum(t.is_alive() for t in self.threads):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pause_cond.wait(min(left, 0.05))
                if self._parked < sum(t.is_alive() for t in self.threads):
                    self._kick_all()
        return True

    def resume(self) -> None:
        with self._pause_cond:
            self._paused = False
            self._pause_cond.notify_all()

    def stop(self, status: int = 0, message: str = "stopped by request") -> None:
        self.request_stop(StopReason("stopped", status, message))

    @property
    def paused(self) -> bool:
        return self._paused

    def request_stop(self, reason: StopReason) -> None:
        with self._pause_cond:
            first = self.stop_reason is None
            if first:
                self.stop_reason = reason
            self.stopping = True
            self._pause_cond.notify_all()
        self._kick_all()
        self._stopped.set()
        if first and self.on_stop is not None:
            self.on_stop(reason)

    def device(self, name: str):
        """The virtio transport named `name` (e.g. "virtio-blk:rootfs")."""
        for transport in self.virtio_devices:
            if transport.name == name:
                return transport
        raise KeyError(name)

    def own(self, fn, *args) -> None:
        """Run `fn(*args)` at tear-down (a resource added while running)."""
        self._cleanup.callback(fn, *args)

    # Called on vCPU threads. -----------------------------------------------
    def vcpu_interrupted(self, vcpu) -> bool:
        """A vCPU left KVM_RUN early; park it while paused. False: stop running."""
        vcpu.set_immediate_exit(False)
        with self._pause_cond:
            if self._paused and not self.stopping:
                self._parked += 1
                self._pause_cond.notify_all()
                while self._paused and not self.stopping:
                    self._pause_cond.wait()
                self._parked -= 1
        if self.stopping:
            return False
        vcpu.set_immediate_exit(False)
        return True

    def fatal(self, vcpu, what: str) -> None:
        lines = [f"vcpu{vcpu.index}: {what}", format_registers(vcpu)]
        lines += self.console_tail()
        self.request_stop(StopReason("crash", EXIT_CRASH, "\n".join(lines)))

    def system_event(self, vcpu, kind: int) -> None:
        if kind == n.KVM_SYSTEM_EVENT_RESET:
            self.request_stop(StopReason("reset", 0, "the guest reset the machine"))
        elif kind == n.KVM_SYSTEM_EVENT_SHUTDOWN:
            self.request_stop(StopReason("exit", 0, "the guest powered off"))
        else:
            self.fatal(vcpu, f"system event {kind} (crash)")

    def guest_exit(self, status: int) -> None:
        self.request_stop(StopReason("exit", status, f"the guest exited with status {status}"))

    def guest_reset(self) -> None:
        self.request_stop(StopReason("reset", 0, "the guest reset the machine (i8042)"))

    def log_ready(self, seconds: float) -> None:
        line = f"boot timer: guest ready {seconds * 1e3:.2f} ms after the monitor started"
        if self.build_started is not None:
            line += (f" ({(time.monotonic() - self.build_started) * 1e3:.2f} ms after the VM "
                     "build began)")
        self.report_lines.append(line)
        if self.on_ready is not None:
            self.on_ready(seconds)

    def console_tail(self) -> list[str]:
        if self.console is None:
            return []
        tail = self.console.tail()
        if not tail:
            return ["(the guest printed nothing)"]
        return ["last console lines:"] + [f"  | {line}" for line in tail]

    console: ConsoleSink | None = None


__all__ = ["Machine", "StopReason", "EXIT_CONFIG", "EXIT_TIMEOUT", "EXIT_CRASH", "EXIT_MONITOR"]
