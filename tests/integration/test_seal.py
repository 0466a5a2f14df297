"""The monitor under its seccomp filters (docs/seal.md): representative runs
pass, and a forbidden call kills it with SIGSYS and a line naming the call."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.kvm
ON = dict(os.environ, KVMM_SECCOMP="on")


def sealed_run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "kvmm", "run", *args], cwd=REPO, env=ON,
                          text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("cmdline,extra,status", [
    ("mode=hello", (), 0), ("mode=smp iters=1000", ("--vcpus", "2"), 0),
    ("mode=fault", (), 125), ("mode=reset", (), 0), ("mode=timer ticks=100000",
                                                     ("--timeout", "1"), 124)])
def test_sealed_guest_runs(guest_kernel, cmdline, extra, status):
    r = sealed_run("--cmdline", cmdline, *extra)
    assert r.returncode == status, r
    assert "seccomp" not in r.stderr, r.stderr


def test_sealed_blktest(guest_kernel, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(b"")
    os.truncate(img, 8 << 20)
    r = sealed_run("--mem", "128M", "--drive", f"path={img}", "--cmdline", "mode=blktest",
                   "--stats-file", str(tmp_path / "s.json"))
    assert r.returncode == 0 and "RESULT blktest PASS" in r.stdout, r


def test_sealed_sigterm(guest_kernel):
    p = subprocess.Popen([sys.executable, "-m", "kvmm", "run", "--cmdline",
                          "mode=timer ticks=100000"], cwd=REPO, env=ON, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "seccomp" not in err, err


def test_forbidden_call_kills_with_sigsys_and_says_which():
    code = ("from kvmm.jail import seccomp\n"
            "seccomp.configure('on')\nseccomp.seal_thread('io')\n"
            "import os\nos.execv('/bin/true', ['true'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True,
                       timeout=30)
    assert r.returncode == -signal.SIGSYS, r
    assert "forbidden system call execve (nr 59)" in r.stderr, r.stderr
