"""Unit tests of the api benchmark's pure parts (no /dev/kvm): `python -m pytest bench`."""
from __future__ import annotations

import os

import pytest

from bench import api
from bench.common import BenchError


def test_request_has_host_length_and_json_body():
    req = api.http_request("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
    head, _, body = req.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"PUT /machine-config HTTP/1.1"
    assert b"Host: localhost" in lines          # h11 rejects HTTP/1.1 without Host
    assert f"Content-Length: {len(body)}".encode() in lines
    assert body == b'{"vcpu_count": 1, "mem_size_mib": 64}'
    assert b"Content-Length" not in api.http_request("GET", "/")


def test_response_parsed_only_when_whole():
    whole = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    for cut in range(len(whole)):
        assert api.parse_response(whole[:cut]) is None
    assert api.parse_response(whole + b"HTTP/1.1 204") == (200, b"{}", len(whole))
    no_body = b"HTTP/1.1 204 No Content\r\nServer: kvmm\r\n\r\n"
    assert api.parse_response(no_body) == (204, b"", len(no_body))
    with pytest.raises(BenchError, match="not an HTTP response"):
        api.parse_response(b"SSH-2.0\r\n\r\n")


@pytest.mark.parametrize("stdout,offset", [
    (b"kvmm-guest: world=pvm\n", 0), (b"2026 [x] log line\nkvmm-guest: w\n", 18),
    (b"kvmm-guest", None), (b"not kvmm-guest: here\n", None), (b"", None)])
def test_banner_must_start_a_line(stdout, offset):
    assert api.banner_offset(stdout) == offset


def test_figures_with_and_without_a_peer():
    assert api.figure("a", 16.0, firecracker=8) == {
        "name": "a", "kvmm": 16.0, "firecracker": 8, "ratio": 2.0, "unit": "ms"}
    assert api.figure("b", 1.23456) == {"name": "b", "kvmm": 1.235, "unit": "ms"}
    assert api.figure("c", 5.0, kvmm_run=0.0)["ratio"] is None


def test_rounds_alternate_the_order_after_a_warmup():
    r = api.rounds(3)
    assert [i for i, _ in r] == [0, 1, 2, 3]
    assert r[0][1] == api.PATHS and r[1][1] == tuple(reversed(api.PATHS))


def test_cpu_time_of_a_process():
    # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED): ((~pid) << 3) | 2
    assert api.process_cpu_clock(1) == -14
    spent = api.cpu_seconds(os.getpid())
    assert 0 < spent < 3600
    assert api.cpu_seconds(2 ** 22 + 12345) == 0.0     # above pid_max: no such process
