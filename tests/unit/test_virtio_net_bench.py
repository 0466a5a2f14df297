"""The host-side helpers of the network benchmark (bench/net.py) that can be
checked without a guest: ICMP packets, /proc readings, percentiles."""
import os
import struct

from bench import net


def test_echo_request_checksums_to_zero():
    packet = net._echo_request(0x1234, 7)
    assert len(packet) == 8 + net.ICMP_PAYLOAD
    kind, code, _sum, ident, seq = struct.unpack_from("!BBHHH", packet)
    assert (kind, code, ident, seq) == (net.ICMP_ECHO_REQUEST, 0, 0x1234, 7)
    assert net._checksum(packet) == 0          # RFC 1071: a valid packet sums to 0


def test_checksum_of_an_odd_length():
    assert net._checksum(b"\x01") == net._checksum(b"\x01\x00")


def test_cpu_seconds_of_this_process():
    before = net.cpu_seconds(os.getpid())
    sum(range(2_000_000))                        # tens of ms: several clock ticks
    after = net.cpu_seconds(os.getpid())
    assert after > 0 and after >= before >= 0


def test_cpu_seconds_of_a_missing_process():
    assert net.cpu_seconds(2 ** 22 + 12345) is None


def test_tap_counters_of_a_missing_interface():
    assert net.tap_counters(os.getpid()) is None     # no kbench0 here


def test_percentile():
    values = list(range(100, 0, -1))
    assert net._percentile(values, 0.9) == 91
    assert net._percentile(values, 0.0) == 1
    assert net._percentile([5.0], 0.99) == 5.0
