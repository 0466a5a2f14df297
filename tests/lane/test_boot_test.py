"""`kvmm boot-test`: the console watcher and the JUnit report (no KVM), then
the command on the project's guest kernel (where /dev/kvm works)."""
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from kvmm import boottest, cli
from kvmm.guest_image import default_kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def watcher(success=("READY",), failure=("PANIC",), regex=False):
    hits = []
    w = boottest.Watcher(list(success), list(failure), hits.append, regex=regex)
    return w, hits


def test_watcher_byte_by_byte_and_split_lines():
    w, hits = watcher()
    for b in b"boot...\nsystem REA":
        w.feed(bytes([b]))
    assert hits == []
    w.feed(b"DY\n")
    assert hits == ["PASS"] and w.matched[1] == "READY" and w.matched[2] == "system READY"


def test_watcher_prompt_without_newline():
    w, hits = watcher(success=("login:",))
    w.feed(b"Debian GNU/Linux 12\nhost login: ")
    assert hits == ["PASS"]


def test_watcher_failure_wins_and_is_final():
    w, hits = watcher()
    w.feed(b"READY\n")
    w.feed(b"Kernel PANIC here\nREADY\n")
    assert hits == ["PASS", "FAIL"] and w.matched[0] == "FAIL"
    w2, hits2 = watcher()
    w2.feed(b"PANIC then READY\n")
    assert hits2 == ["FAIL"]


def test_watcher_literal_and_regex():
    w, hits = watcher(success=("a.c",))
    w.feed(b"abc\n")
    assert hits == []
    w.feed(b"a.c\n")
    assert hits == ["PASS"]
    w, hits = watcher(success=(r"RESULT \w+ PASS",), regex=True)
    w.feed(b"RESULT hello PASS\n")
    assert hits == ["PASS"]


def test_junit_report(tmp_path):
    out = boottest.Outcome("FAIL", "timeout: no success pattern within 5 s",
                           "vcpu0:\n  rip=0x1 <&>", None, 5.5, b"line one\n\x1b[0mline two\n")
    path = tmp_path / "r.xml"
    boottest.write_junit(str(path), "my kernel", out)
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "1" and suite.get("tests") == "1"
    case = suite.find("testcase")
    assert case.get("name") == "my kernel" and case.get("time") == "5.500"
    assert case.find("failure").get("message").startswith("timeout")
    assert "rip=0x1 <&>" in case.find("failure").text
    assert "line two" in case.find("system-out").text
    ok = boottest.Outcome("PASS", "matched", "", 1.25, 2.0, b"READY\n")
    boottest.write_junit(str(path), "k", ok)
    suite = ET.parse(path).getroot()
    assert suite.get("failures") == "0" and suite.find("testcase/failure") is None
    assert suite.find("testcase/properties/property").get("value") == "1.250"
    skip = boottest.Outcome("SKIP", "/dev/kvm missing")
    boottest.write_junit(str(path), "k", skip)
    assert ET.parse(path).getroot().find("testcase/skipped") is not None


def test_needs_a_success_pattern(capsys):
    assert cli.main(["boot-test"]) == 2
    assert "--success" in capsys.readouterr().err


def test_bad_kernel_is_exit_2_before_anything(tmp_path, capsys):
    k = tmp_path / "k"
    k.write_bytes(b"nonsense" * 100)
    assert cli.main(["boot-test", "--kernel", str(k), "--success", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an ELF" in err[0]


def test_require_kvm_refuses(monkeypatch, tmp_path, capsys):
    from tests import elfimage
    k = tmp_path / "k"
    k.write_bytes(elfimage.build())
    monkeypatch.setattr(boottest, "kvm_problem", lambda: "open /dev/kvm failed: No such file")
    assert cli.main(["boot-test", "--kernel", str(k), "--success", "x", "--require-kvm"]) == 2
    assert "--require-kvm" in capsys.readouterr().err
    junit = tmp_path / "j.xml"
    assert cli.main(["boot-test", "--kernel", str(k), "--success", "x",
                     "--junit", str(junit)]) == 0
    assert "SKIP" in capsys.readouterr().err
    assert ET.parse(junit).getroot().get("skipped") == "1"


# On /dev/kvm, with the project's guest kernel (skipped without /dev/kvm, a failure
# then with KVMM_REQUIRE_KVM=1, as in tests/integration). ---------------------------
@pytest.fixture
def kvm(tmp_path):
    from tests.integration.conftest import _kvm_problem, require
    require(_kvm_problem())
    if not os.path.exists(default_kernel()):
        pytest.fail(f"the guest kernel {default_kernel()} is not built: run "
                    "`make -C guest-kernel` (ci/setup does)")


needs_kvm = pytest.mark.usefixtures("kvm")


def boot_test(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "kvmm", "boot-test", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@needs_kvm
def test_pass_prints_boot_time(tmp_path):
    junit = tmp_path / "j.xml"
    r = boot_test("--success", "RESULT hello PASS", "--console", "none", "--junit", str(junit))
    assert r.returncode == 0, r.stderr
    assert "kvmm boot-test: PASS" in r.stderr and "boot time" in r.stderr
    assert ET.parse(junit).getroot().get("failures") == "0"


@needs_kvm
def test_wait_exit_needs_a_clean_stop():
    r = boot_test("--success", "RESULT hello PASS", "--wait-exit", "--console", "none")
    assert r.returncode == 0, r.stderr
    r = boot_test("--success", "RESULT", "--wait-exit", "--console", "none",
                  "--cmdline", "mode=nosuchmode")
    assert r.returncode in (0, 1)            # the guest decides; the verdict must be coherent
    assert ("PASS" in r.stderr) == (r.returncode == 0)


@needs_kvm
def test_failure_pattern():
    r = boot_test("--success", "NEVER PRINTED", "--failure", "RESULT hello", "--console", "none")
    assert r.returncode == 1 and "failure pattern 'RESULT hello'" in r.stderr


@needs_kvm
def test_guest_stops_before_the_pattern():
    r = boot_test("--success", "NEVER PRINTED", "--console", "none")
    assert r.returncode == 1 and "stopped before a success pattern" in r.stderr
    assert "last console lines" in r.stderr


@needs_kvm
def test_timeout_dumps_registers(tmp_path):
    from tests import elfimage
    spin = tmp_path / "spin.elf"
    spin.write_bytes(elfimage.build([(0x100000, b"\xeb\xfe", 2, 5)]))     # jmp .
    start = time.monotonic()
    r = boot_test("--kernel", str(spin), "--success", "NEVER", "--timeout", "1.5",
                  "--console", "none", "--junit", str(tmp_path / "j.xml"))
    assert r.returncode == 1, r.stderr
    assert "timeout: no success pattern within 1.5 s" in r.stderr
    assert "rip=0x0000000000100000" in r.stderr and "the guest printed nothing" in r.stderr
    assert time.monotonic() - start < 30
    case = ET.parse(tmp_path / "j.xml").getroot().find("testcase")
    assert "rip=" in case.find("failure").text
