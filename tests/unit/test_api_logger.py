"""Firecracker's logger semantics for the kvmm loggers: levels, line format,
module filter, files and FIFOs that never block."""
import logging
import os
import re
import threading

import pytest

from kvmm.api import logger as fclog
from tests.unit.pipes import drain

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}) \[([^\]]*)\] (.*)$")


@pytest.fixture(autouse=True)
def _clean():
    yield
    fclog.reset()


@pytest.mark.parametrize("name,level", [
    ("Error", logging.ERROR), ("ERROR", logging.ERROR), ("warning", logging.WARNING),
    ("Warn", logging.WARNING), ("info", logging.INFO), ("DeBuG", logging.DEBUG),
    ("Trace", fclog.TRACE), ("off", fclog.OFF)])
def test_levels_are_case_insensitive(name, level):
    assert fclog.parse_level(name) == level


@pytest.mark.parametrize("bad", ["verbose", "", "Critical", None, 3])
def test_bad_level_names_the_field_and_the_valid_values(bad):
    with pytest.raises(ValueError) as e:
        fclog.parse_level(bad)
    msg = str(e.value)
    assert msg.startswith("level:")
    for valid in ("Error", "Warning", "Info", "Debug", "Trace", "Off"):
        assert valid in msg


def test_configure_rejects_a_bad_level_before_touching_the_path(tmp_path):
    with pytest.raises(ValueError, match="^level:"):
        fclog.configure(str(tmp_path / "log"), "loud")
    assert not (tmp_path / "log").exists()


def _read(path):
    with open(path) as f:
        return f.read().splitlines()


def test_default_line_has_instance_and_thread_only(tmp_path):
    path = tmp_path / "fc.log"
    fclog.configure(str(path), "Info", instance_id="vm-1")
    log = logging.getLogger("kvmm.test")
    log.info("hello %s", "world")
    log.debug("not shown at Info")
    lines = _read(path)
    assert len(lines) == 1
    stamp, tag, message = LINE.match(lines[0]).groups()
    assert tag == f"vm-1:{threading.current_thread().name}"
    assert message == "hello world"


def test_show_level_and_origin(tmp_path):
    path = tmp_path / "fc.log"
    fclog.configure(str(path), "debug", show_level=True, show_log_origin=True)
    log = logging.getLogger("kvmm.virtio.test")
    log.warning("careful")
    log.debug("detail")
    first, second = _read(path)
    tag = LINE.match(first).group(2)
    instance, thread, level, origin, line = tag.split(":")
    assert (instance, level) == ("anonymous-instance", "WARN")
    assert origin == "tests/unit/test_api_logger.py"
    assert int(line) > 0
    assert LINE.match(second).group(2).split(":")[2] == "DEBUG"


def test_trace_and_off(tmp_path):
    path = tmp_path / "fc.log"
    fclog.configure(str(path), "Trace", show_level=True)
    logging.getLogger("kvmm.t").log(fclog.TRACE, "deep")
    fclog.configure(str(path), "Off")
    logging.getLogger("kvmm.t").error("silenced")
    lines = _read(path)
    assert len(lines) == 1 and ":TRACE]" in lines[0]


def test_module_filter_takes_rust_or_python_paths(tmp_path):
    path = tmp_path / "fc.log"
    fclog.configure(str(path), "Info", module="kvmm::virtio")
    logging.getLogger("kvmm.virtio.blk").info("kept")
    logging.getLogger("kvmm.machine").info("dropped")
    assert [LINE.match(ln).group(3) for ln in _read(path)] == ["kept"]


def test_reconfigure_replaces_the_handler_and_appends(tmp_path):
    path = tmp_path / "fc.log"
    path.write_text("earlier line\n")
    fclog.configure(str(path), "Info")
    fclog.configure(str(path), "Info")
    logging.getLogger("kvmm").info("once")
    assert _read(path) == ["earlier line", _read(path)[1]]
    assert _read(path)[1].endswith("] once")


def test_unwritable_path_names_the_field(tmp_path):
    with pytest.raises(OSError, match="log_path"):
        fclog.configure(str(tmp_path / "no" / "such" / "dir"), "Info")


def test_fifo_full_drops_records_without_blocking(tmp_path):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    handler = fclog.configure(str(fifo), "Info")
    log = logging.getLogger("kvmm.flood")
    for i in range(5000):                # ~500 KB: far more than a pipe holds
        log.info("record %05d %s", i, "x" * 80)
    assert handler.missed > 0
    data = drain(reader)
    lines = data.decode().splitlines()
    assert lines and all(LINE.match(ln) for ln in lines)   # whole lines only
    assert len(lines) + handler.missed == 5000
    os.close(reader)


def test_fifo_without_a_reader_yet(tmp_path):
    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    handler = fclog.configure(str(fifo), "Info")
    logging.getLogger("kvmm").info("lost")
    assert handler.missed == 1
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    logging.getLogger("kvmm").info("seen")
    assert os.read(reader, 4096).decode().endswith("] seen\n")
    os.close(reader)


def test_timestamp_has_nanoseconds():
    stamp = fclog.local_timestamp(1_541_591_155_180_751_152)
    assert stamp.endswith(".180751152")
