"""Integration tests boot real guests on /dev/kvm (fixtures in tests/conftest.py)."""
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import _kvm_problem, require  # noqa: F401  (re-exported for tests)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.status = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.lines = proc.stdout.splitlines()

    def verdict(self) -> dict:
        """The guest's `RESULT mode PASS|FAIL key=value...` line, parsed."""
        for line in reversed(self.lines):
            if line.startswith("RESULT "):
                words = line.split()
                out = {"mode": words[1], "result": words[2]}
                for w in words[3:]:
                    if "=" in w:
                        k, v = w.split("=", 1)
                        out[k] = v
                return out
        raise AssertionError(f"no verdict line in the guest's output:\n{self.stdout}\n"
                             f"stderr:\n{self.stderr}")

    def __repr__(self) -> str:
        return f"Run(status={self.status}, stdout={self.stdout[-2000:]!r}, " \
               f"stderr={self.stderr[-2000:]!r})"


def kvmm(*args, timeout: float = 60, check_status: int | None = None,
         cpus: set[int] | None = None) -> Run:
    """Run `python -m kvmm ARGS` (on host CPUs `cpus` if given) and return its
    status and output."""
    proc = subprocess.run([sys.executable, "-m", "kvmm", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          preexec_fn=None if cpus is None else on_cpus(cpus))
    run = Run(proc)
    if check_status is not None:
        assert run.status == check_status, run
    return run


@pytest.fixture
def run_kvmm(guest_kernel):
    return kvmm



def api(sock: str, method: str, path: str, body=None, timeout: float = 20):
    """One request to a running monitor's API (--api-sock) that must succeed;
    its JSON answer (None for 204)."""
    from kvmm.api.client import request
    status, answer = request(sock, method, path, body, timeout)
    assert status < 300, (method, path, body, status, answer)
    return answer


def stop(proc: subprocess.Popen) -> None:
    """Stop a monitor in order (SIGTERM: it stops its guest and exits 0)."""
    import signal
    proc.send_signal(signal.SIGTERM)


def wait_for_socket(sock: str, proc: subprocess.Popen, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(sock):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{sock} did not appear in {seconds} s"
        time.sleep(0.01)



def on_cpus(cpus: set[int]):
    """A preexec_fn that confines the child to host CPUs `cpus`."""
    return lambda: os.sched_setaffinity(0, cpus)


def two_cpus() -> tuple[int, int]:
    """Two host CPUs: one for a measured guest, one for a flooding guest.

    Isolation between guests on shared CPUs is what --cpu-quota bounds; the
    flood tests give each guest its own CPU, as a deployment that isolates
    guests does, and so measure what reaches the second guest through the
    devices and the host kernel rather than where the scheduler put a thread
    (on a 2-CPU host that alone moves a guest's IOPS by tens of per cent)."""
    cpus = sorted(os.sched_getaffinity(0))
    require(None if len(cpus) >= 2 else "the flood tests need two host CPUs")
    return cpus[0], cpus[-1]


def second_guest_iops(disk: str, cpu: int, *extra: str) -> int:
    """Random 4 KiB reads at queue depth 4 for 1 s, as the guest measures them,
    with the monitor on host CPU `cpu`."""
    r = kvmm("run", "--mem", "128M", "--drive", f"path={disk}", "--cmdline",
             "mode=blkbench op=read pattern=rand bs=4096 qd=4 seconds=1", *extra,
             "--timeout", "60", check_status=0, cpus={cpu})
    return int(r.verdict()["iops"])

def iops_alone_and_beside(measure, flood_sock: str, rounds: int = 6) -> tuple[float, float]:
    """The second guest's mean IOPS with the flooding guest paused and with it
    running, measured in alternation (paused, running, paused, ...) so that
    the machine's own drift between runs falls on both sides alike."""
    alone, beside = [], []
    for _ in range(rounds):
        api(flood_sock, "PATCH", "/vm", {"state": "Paused"})
        alone.append(measure())
        api(flood_sock, "PATCH", "/vm", {"state": "Resumed"})
        time.sleep(0.2)
        beside.append(measure())
    return sum(alone) / rounds, sum(beside) / rounds
