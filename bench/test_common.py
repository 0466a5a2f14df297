"""Unit tests of the harness's own pieces (no /dev/kvm, no QEMU):
`python -m pytest bench`."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import common
from bench.common import Guest, Kvmm, Process, Qemu, parse_verdict


def test_verdict_is_the_last_result_line():
    v = parse_verdict("RESULT hello FAIL\nnoise\nRESULT iobench PASS n=10 ns_per_exit=31000\r\n")
    assert v.mode == "iobench" and v.passed
    assert v.fields == {"n": "10", "ns_per_exit": "31000"}
    assert v.number("ns_per_exit") == 31000.0


@pytest.mark.parametrize("text", ["", "hello\n", "RESULT\n", "RESULT hello MAYBE\n",
                                  "xRESULT hello PASS\n"])
def test_no_verdict(text):
    assert parse_verdict(text) is None


def test_verdict_number_errors_name_the_key():
    v = parse_verdict("RESULT mem PASS pages=lots\n")
    with pytest.raises(common.BenchError, match="pages"):
        v.number("pages")
    with pytest.raises(common.BenchError, match="ram="):
        v.number("ram")


@pytest.mark.parametrize("returncode,status", [(1, 0), (3, 1), (7, 3), (511, 255),
                                               (0, None), (2, None), (-9, None)])
def test_qemu_debug_exit_status(returncode, status):
    assert Qemu("qemu").guest_status(returncode) == status


def test_kvmm_status_is_the_exit_status():
    assert Kvmm("python").guest_status(0) == 0
    assert Kvmm("python").guest_status(124) == 124
    assert Kvmm("python").guest_status(-9) is None


def test_both_monitors_boot_the_same_guest():
    g = Guest("iobench", (("n", 100),), mem="1G", vcpus=2)
    assert g.cmdline == "mode=iobench n=100"
    k = Kvmm("/py").command(g, Path("/k.elf"), 5)
    q = Qemu("/qemu").command(g, Path("/k.elf"), 5)
    assert k[:5] == ["/py", "-S", "-m", "kvmm", "run"]
    for argv, mem_flag, cmd_flag in ((k, "--mem", "--cmdline"), (q, "-m", "-append")):
        assert argv[argv.index(mem_flag) + 1] == "1G"
        assert argv[argv.index(cmd_flag) + 1] == "mode=iobench n=100"
        assert "/k.elf" in argv
    assert "isa-debug-exit,iobase=0xf4,iosize=4" in q


def test_figure_ratio_is_kvmm_over_qemu():
    f = common.figure("x", 3.0, 2.0, "ms")
    assert f == {"name": "x", "kvmm": 3.0, "qemu": 2.0, "ratio": 1.5, "unit": "ms"}
    assert common.figure("x", 1.0, 0.0, "ms")["ratio"] is None


def _process(maxrss, floor, hwm):
    return Process([], 0, 0.1, 0.2, b"", b"", maxrss, floor, hwm)


def test_peak_rss_uses_maxrss_only_above_the_harness_rss():
    assert _process(40_000, 15_000, 39_000).peak_rss_kib == 40_000
    # ru_maxrss is the harness's own RSS folded in at exec: use the samples.
    assert _process(15_100, 15_000, 12_400).peak_rss_kib == 12_400


def test_spawn_times_first_byte_and_exit():
    p = common.spawn(["/bin/sh", "-c", "sleep 0.05; echo hi; echo err >&2; exit 3"], 5)
    assert p.returncode == 3
    assert p.stdout == b"hi\n" and p.stderr == b"err\n"
    assert 0.04 < p.first_byte <= p.exited < 5


def test_spawn_kills_at_the_timeout():
    with pytest.raises(common.BenchError, match="did not finish within"):
        common.spawn(["/bin/sh", "-c", "echo started; exec sleep 30"], 0.3)


def test_spawn_of_a_missing_program():
    with pytest.raises(common.BenchError, match="cannot start"):
        common.spawn(["/nonexistent/qemu"], 1)


def test_spawn_samples_rss():
    p = common.spawn([sys.executable, "-S", "-c", "import time; b = bytearray(32 << 20); "
                      "time.sleep(0.05)"], 5, sample_rss=True)
    assert p.hwm_sampled_kib > 32 << 10
    assert p.peak_rss_kib >= p.hwm_sampled_kib - 1024
