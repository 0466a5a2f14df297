"""Bad input: one line on stderr, exit status 2, nothing started."""
import os

import pytest

from tests import elfimage
from tests.integration.conftest import kvmm


def one_line_error(r, *needles):
    assert r.status == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r
    assert lines[0].startswith("kvmm: ")
    for needle in needles:
        assert needle in lines[0], r
    assert r.stdout == ""


def test_missing_kernel(tmp_path):
    one_line_error(kvmm("run", "--kernel", str(tmp_path / "nope")), "does not exist")


def test_kernel_is_a_directory(tmp_path):
    one_line_error(kvmm("run", "--kernel", str(tmp_path)), "is a directory")


def test_unreadable_kernel():
    one_line_error(kvmm("run", "--kernel", "/proc/self/mem"), "cannot read")


def test_not_an_elf(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(b"#!/bin/sh\necho not a kernel\n" * 10)
    one_line_error(kvmm("run", "--kernel", str(p)), "not an ELF")


def test_truncated_elf(tmp_path, guest_kernel):
    data = open(guest_kernel, "rb").read()
    p = tmp_path / "k"
    p.write_bytes(data[:len(data) // 2])
    one_line_error(kvmm("run", "--kernel", str(p)), "truncated")


def test_segment_outside_ram(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(elfimage.build([(0xBFFFF000, elfimage.CODE, 0x10000, 5)], entry=0xBFFFF000))
    one_line_error(kvmm("run", "--kernel", str(p)), "outside guest RAM")


def test_mem_too_small_for_the_kernel(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(elfimage.build([(0x100000, elfimage.CODE, 32 << 20, 5)]))
    one_line_error(kvmm("run", "--kernel", str(p), "--mem", "16M"), "--mem")


@pytest.mark.parametrize("value,needle", [("0", "--vcpus"), ("65", "--vcpus"),
                                          ("two", "whole number"), ("-1", "--vcpus")])
def test_bad_vcpus(value, needle):
    one_line_error(kvmm("run", "--vcpus", value), needle)


@pytest.mark.parametrize("value", ["lots", "1X", "", "1M5"])
def test_bad_mem(value):
    one_line_error(kvmm("run", "--mem", value), "--mem")


def test_mem_below_minimum():
    one_line_error(kvmm("run", "--mem", "1M"), "too small")


def test_console_path_unwritable(guest_kernel, tmp_path):
    one_line_error(kvmm("run", "--console", str(tmp_path / "no" / "such" / "dir")),
                   "--console")


def test_bad_timeout():
    one_line_error(kvmm("run", "--timeout", "-3"), "--timeout")


def test_nothing_is_left_behind(tmp_path):
    before = set(os.listdir(tmp_path))
    kvmm("run", "--kernel", str(tmp_path / "nope"))
    assert set(os.listdir(tmp_path)) == before
