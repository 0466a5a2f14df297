"""firecracker-python (PyPI `firecracker-python` 0.0.5, unchanged) driving
kvmm's `firecracker` entry point: the package's process manager starts and
stops the binary, its `Api` configures and boots the guest on the API socket,
its `VMMManager` pauses, resumes and reads the state and configuration.

The package and its dependencies live in their own virtualenv (.venv-fcpy,
made by ci/fcpy-venv); tests/integration/fcpy/driver.py runs there and takes
one command a line from these tests. The package's paths (data directory,
binary) point into a directory of the test's own, and the binary is a
launcher that runs `python -m kvmm firecracker` inside the test's network
namespace, where the guest's TAP is.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
import time

import pytest

from kvmm.api.client import request
from tests.integration.conftest import REPO
from tests.integration.fc_client import FIRECRACKER, image, short_dir
from tests.integration.test_blk import pattern_sector
from tests.integration.test_net import net_ok, netns, ping, tap, udp_socket  # noqa: F401

pytestmark = pytest.mark.kvm

FCPY_VENV = os.path.join(REPO, ".venv-fcpy")
FCPY_PYTHON = os.path.join(FCPY_VENV, "bin", "python")
FCPY_VERSION = "0.0.5"
DRIVER = os.path.join(REPO, "tests", "integration", "fcpy", "driver.py")
ANSWER_SECONDS = 30.0        # ProcessManager.stop may retry for several seconds
ECHO_PORT = 7


@pytest.fixture(scope="module")
def fcpy():
    """The .venv-fcpy interpreter, with the pinned firecracker-python."""
    if not os.access(FCPY_PYTHON, os.X_OK):
        pytest.fail(f"{FCPY_VENV} is missing: run ci/fcpy-venv (ci/setup does) to install "
                    f"firecracker-python {FCPY_VERSION} there")
    proc = subprocess.run([FCPY_PYTHON, "-c", "import importlib.metadata as m; "
                           "print(m.version('firecracker-python'))"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode or proc.stdout.strip() != FCPY_VERSION:
        pytest.fail(f"{FCPY_VENV} does not hold firecracker-python {FCPY_VERSION} "
                    f"({proc.stdout.strip() or proc.stderr.strip()}): run ci/fcpy-venv")
    return FCPY_PYTHON


class FcPy:
    """The driver process: send(op, ...) returns its answer (a dict)."""

    def __init__(self, python: str, data_path: str, binary_path: str):
        settings = json.dumps({"data_path": data_path, "binary_path": binary_path})
        self.proc = subprocess.Popen([python, DRIVER, settings], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.other: list[str] = []           # what the package printed besides answers
        self._answers: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        hello = self._answer("start-up")
        assert hello["package"] == FCPY_VERSION, hello

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("FCPY "):
                self._answers.put(json.loads(line[5:]))
            else:
                self.other.append(line.rstrip("\n"))
        self._answers.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def _answer(self, what: str) -> dict:
        try:
            answer = self._answers.get(timeout=ANSWER_SECONDS)
        except queue.Empty:
            raise AssertionError(f"the driver did not answer {what} within "
                                 f"{ANSWER_SECONDS:g} s\n{self.transcript()}") from None
        if answer is None:
            raise AssertionError(f"the driver ended before answering {what}\n"
                                 f"{self.transcript()}")
        return answer

    def send(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        answer = self._answer(op)
        assert answer["ok"], f"{op} {args}: {answer.get('error')}\n" \
                             f"{answer.get('traceback', '')}\n{self.transcript()}"
        return answer

    def transcript(self) -> str:
        return ("driver stdout:\n" + "\n".join(self.other[-20:]) +
                "\ndriver stderr:\n" + "\n".join(self._stderr[-40:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def launcher(directory: str, netns_name: str | None) -> str:
    """An executable `firecracker` that runs kvmm's entry point (in the namespace)."""
    path = os.path.join(directory, "firecracker")
    prefix = f"ip netns exec {netns_name} " if netns_name else ""
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" f"exec {prefix}{' '.join(FIRECRACKER)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


class Session:
    """A driver plus the microVM it started; the microVM is killed at the end
    if a test left it running."""

    def __init__(self, python: str, root: str, netns_name: str | None):
        self.data = os.path.join(root, "data")
        os.mkdir(self.data)
        self.client = FcPy(python, self.data, launcher(root, netns_name))
        self.pids: list[int] = []

    def start(self, vm_id: str) -> dict:
        started = self.client.send("start", id=vm_id)
        self.pids.append(started["pid"])
        return started

    def call(self, resource: str, method: str, **kwargs) -> dict:
        return self.client.send("call", resource=resource, method=method, kwargs=kwargs)

    def manager(self, method: str, *args):
        return self.client.send("manager", method=method, args=list(args))["value"]

    def close(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        self.client.close()


@pytest.fixture
def session(fcpy, guest_kernel):
    with short_dir() as root:
        sessions = []

        def make(netns_name: str | None = None) -> Session:
            s = Session(fcpy, root, netns_name)
            sessions.append(s)
            return s
        yield make
        for s in sessions:
            s.close()


def console_line(path: str, text: str, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(path, errors="replace") as f:
            for line in f.read().splitlines():
                if text in line:
                    return line
        time.sleep(0.02)
    with open(path, errors="replace") as f:
        raise AssertionError(f"no {text!r} in {path} within {seconds:g} s:\n{f.read()[-3000:]}")


def verdict(path: str) -> dict:
    line = console_line(path, "RESULT ")
    words = line.split()
    return {"mode": words[1], "result": words[2],
            **dict(w.split("=", 1) for w in words[3:] if "=" in w)}


def test_firecracker_python_boots_limits_pauses_and_stops_a_guest(session, netns, net_ok,
                                                                  guest_kernel):
    ns = netns.new()
    tap(ns, "kfc0", "10.200.20.1/24")
    s = session(ns)
    with short_dir() as images:
        disk = image(os.path.join(images, "rootfs.ext4"), 8 << 20)
        vm_id = "kvmmfc01"                         # utils.generate_id's shape
        started = s.start(vm_id)
        assert started["running"] is True
        assert started["describe"]["state"] == "Not started", started
        assert started["describe"]["id"] == vm_id, started

        # MicroVM.create's configuration calls, as it makes them.
        s.call("boot", "put", kernel_image_path=guest_kernel,
               boot_args=f"mode=netecho ip=10.200.20.2/24 port={ECHO_PORT} seconds=0")
        s.call("drive", "put", drive_id="rootfs", path_on_host=disk, is_root_device=True,
               is_read_only=False)
        s.call("machine_config", "put", vcpu_count=1, mem_size_mib=128)
        s.call("network", "put", iface_id="eth0", host_dev_name="kfc0")
        assert s.call("actions", "put", action_type="InstanceStart")["status"] == 204

        # ProcessManager.get_pid insists on a process named `firecracker`.
        assert s.client.send("get_pid", id=vm_id)["pid"] == started["pid"]
        console = started["console_path"]           # ProcessManager sends stdout there
        console_line(console, "netecho ready")
        replies, out = ping(ns, "10.200.20.2", 3)
        assert replies == 3, out

        # A rate limiter on the running drive, through PATCH /drives/rootfs.
        limiter = {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
                   "ops": {"size": 500, "one_time_burst": 0, "refill_time": 1000}}
        assert s.call("drive", "patch", drive_id="rootfs",
                      rate_limiter=limiter)["status"] == 204
        config = s.manager("get_vmm_config", vm_id)          # GET /vm/config
        (drive,) = config["drives"]
        assert drive["drive_id"] == "rootfs" and drive["rate_limiter"] == limiter, drive
        status, stats = request(started["socket"], "GET", "/kvmm/stats")
        assert status == 200, stats
        live = stats["limits"]["drive:rootfs"]
        assert live["bandwidth"]["size"] == 1048576 and live["bandwidth"]["refill_time"] == 100
        assert live["ops_bucket"]["size"] == 500, live

        # Paused: the guest answers nothing; resumed, it answers what waited.
        sock = udp_socket(ns, "10.200.20.1", timeout=0.5)
        try:
            s.manager("update_vmm_state", vm_id, "Paused")
            assert s.manager("get_vmm_state", vm_id) == "Paused"
            sock.sendto(b"sent while paused", ("10.200.20.2", ECHO_PORT))
            with pytest.raises(socket.timeout):
                sock.recvfrom(2048)
            s.manager("update_vmm_state", vm_id, "Resumed")
            assert s.manager("get_vmm_state", vm_id) == "Running"
            sock.settimeout(5.0)
            assert sock.recvfrom(2048)[0] == b"sent while paused"
            sock.sendto(b"STOP", ("10.200.20.2", ECHO_PORT))
        finally:
            sock.close()

        v = verdict(console)
        assert v["result"] == "PASS" and v["stop"] == "datagram", v
        assert int(v["echoed"]) == 2, v

        # ProcessManager.stop: the process is gone, with its pid file and socket.
        stopped = s.client.send("stop", id=vm_id, pid=started["pid"])
        assert stopped["stopped"] is True and stopped["running"] is False, stopped
        assert stopped["exit_status"] == 0, stopped
        assert not stopped["socket_exists"] and not stopped["pid_file_exists"], stopped
        assert not os.path.exists(f"/proc/{started['pid']}")


def test_firecracker_python_stops_a_running_guest_with_sigterm(session, guest_kernel):
    """ProcessManager.stop sends SIGTERM and waits 2 s before SIGKILL: kvmm stops
    the guest in order within that, exits 0, and the guest's flushed writes are
    in the image."""
    s = session()
    with short_dir() as images:
        disk = image(os.path.join(images, "data.img"), 4 << 20)
        vm_id = "kvmmfc02"
        started = s.start(vm_id)
        s.call("boot", "put", kernel_image_path=guest_kernel,
               boot_args="mode=blkwrite seed=5 sectors=256")
        s.call("drive", "put", drive_id="rootfs", path_on_host=disk, is_root_device=True,
               is_read_only=False)
        s.call("machine_config", "put", vcpu_count=1, mem_size_mib=64)
        s.call("actions", "put", action_type="InstanceStart")
        console_line(started["console_path"], "FLUSHED seed=5 sectors=256")
        assert s.manager("get_vmm_state", vm_id) == "Running"
        stopped = s.client.send("stop", id=vm_id, pid=started["pid"])
        assert stopped["stopped"] is True and stopped["exit_status"] == 0, stopped
        with open(disk, "rb") as f:
            data = f.read(256 * 512)
        for sector in range(256):
            assert data[sector * 512:(sector + 1) * 512] == pattern_sector(5, sector), sector
