"""Shared pieces of the tests that drive `kvmm firecracker` the way real
Firecracker clients do: the process (started as those clients start the
`firecracker` binary, optionally inside a network namespace), its API socket,
its console, its process and thread names.

The API calls go through kvmm.api.client.request (HTTP/1.1 on the Unix socket),
which returns (status, parsed body) and raises only when the socket is gone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from kvmm.api.client import request
from tests.integration.conftest import REPO

# How the orchestrators name the binary; kvmm's console script is the same
# program as `python -m kvmm firecracker`.
FIRECRACKER = [sys.executable, "-m", "kvmm", "firecracker"]
VERSION_RE = r"^Firecracker v\d+\.\d+\.\d+$"
STOP_SECONDS = 15.0          # Kata's fcStopSandboxTimeout


@contextlib.contextmanager
def short_dir(prefix: str = "kvmm-fc-"):
    """A fresh directory under /tmp: API socket paths must fit in sun_path
    (108 bytes), which pytest's tmp_path often does not leave room for."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def image(path: str, size: int, fill: bytes = b"") -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        if fill:
            f.write(fill)
    return path


class Firecracker:
    """A `kvmm firecracker ARGS` process, inside network namespace `netns` if
    given, its stdout (the guest's console) and stderr in files under `workdir`."""

    def __init__(self, args: list[str], workdir: str, netns: str | None = None,
                 prefix: list[str] | None = None):
        argv = (prefix or FIRECRACKER) + list(args)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns] + argv
        self.argv = argv
        self.stdout_path = os.path.join(workdir, "firecracker.stdout")
        self.stderr_path = os.path.join(workdir, "firecracker.stderr")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        self.pid = self.proc.pid        # `ip netns exec` execs the command: same pid

    # What it wrote. ---------------------------------------------------------
    def console(self) -> str:
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def transcript(self) -> str:
        return (f"argv: {' '.join(self.argv)}\nstatus: {self.proc.poll()}\n"
                f"console (last 3000 chars):\n{self.console()[-3000:]}\n"
                f"stderr (last 3000 chars):\n{self.stderr()[-3000:]}")

    def wait_for_console(self, text: str, seconds: float = 20.0) -> str:
        """The first console line containing `text`; fails if the process ends
        or `seconds` pass first."""
        deadline = time.monotonic() + seconds
        while True:
            for line in self.console().splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"the process ended before {text!r} on the console\n"
                                     f"{self.transcript()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on the console within {seconds:g} s\n"
                                     f"{self.transcript()}")
            time.sleep(0.02)

    def verdict(self) -> dict:
        """The guest's `RESULT mode PASS|FAIL key=value ...` line, parsed."""
        for line in reversed(self.console().splitlines()):
            if line.startswith("RESULT "):
                words = line.split()
                out = {"mode": words[1], "result": words[2]}
                out.update(w.split("=", 1) for w in words[3:] if "=" in w)
                return out
        raise AssertionError(f"no verdict line on the console\n{self.transcript()}")

    # Its names, as Kata and `ps` read them. -----------------------------------
    def comm(self) -> str:
        with open(f"/proc/{self.pid}/comm") as f:
            return f.read().rstrip("\n")

    def thread_names(self) -> list[str]:
        names = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/comm") as f:
                    names.append(f.read().rstrip("\n"))
            except FileNotFoundError:
                pass                     # the thread ended meanwhile
        return sorted(names)

    # Ending it. -------------------------------------------------------------
    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, seconds: float = STOP_SECONDS) -> int:
        try:
            return self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the process did not exit within {seconds:g} s\n"
                                 f"{self.transcript()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def call(sock: str, method: str, path: str, body=None, expect: int | None = None,
         timeout: float = 5.0):
    """One API request; with `expect`, the status must be that one."""
    status, obj = request(sock, method, path, body, timeout)
    if expect is not None:
        assert status == expect, f"{method} {path} {body!r}: {status} {obj!r}"
    return status, obj


def wait_for_api(sock: str, fc: Firecracker, seconds: float = 20.0) -> dict:
    """Poll GET / until the API answers; returns the instance info."""
    deadline = time.monotonic() + seconds
    while True:
        if fc.proc.poll() is not None:
            raise AssertionError(f"the process ended before its API answered\n"
                                 f"{fc.transcript()}")
        if os.path.exists(sock):
            try:
                status, info = request(sock, "GET", "/")
                if status == 200:
                    return info
            except OSError:
                pass                      # bound but not yet listening
        if time.monotonic() > deadline:
            raise AssertionError(f"no API on {sock} within {seconds:g} s\n{fc.transcript()}")
        time.sleep(0.01)


def wait_for_state(sock: str, fc: Firecracker, state: str, seconds: float = 10.0,
                   interval: float = 0.01) -> dict:
    """Poll GET / until `state` (Kata's waitVMMRunning polls every 10 ms)."""
    deadline = time.monotonic() + seconds
    info = None
    while time.monotonic() < deadline:
        if fc.proc.poll() is not None:
            break
        status, info = request(sock, "GET", "/")
        if status == 200 and info.get("state") == state:
            return info
        time.sleep(interval)
    raise AssertionError(f"GET / did not show {state!r} within {seconds:g} s (last: {info!r})"
                         f"\n{fc.transcript()}")
