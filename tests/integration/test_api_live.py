"""kvmm's Firecracker-compatible API, live: a `kvmm firecracker` process on its
Unix socket, before boot and with a running guest, fed generated and broken
input from outside.

1. schemathesis generates requests from kvmm/api/openapi.yaml (valid and
   invalid ones) against a monitor that has not started its guest
   (configuration endpoints) and against one whose guest runs (runtime
   endpoints); no answer may be a 5xx and every answer must be one the
   document lists, with a body of the documented shape.
2. Hand-made bad input against a monitor with a running guest: bad body
   fields, bytes that are not HTTP, an oversized body, a client that stalls,
   100 clients at once, a stale socket, a second monitor on a live socket, and
   bad --config-file files for `kvmm firecracker` and `kvmm run`.

requests (schemathesis's transport) reaches the Unix socket through a small
transport adapter (UnixAdapter) rather than a TCP forwarder: the monitor then
sees the client's own connection (its closes and keep-alive, no relay between
them that could hide or add a reset), no thread or port is needed, and the
adapter is handed to schemathesis as a requests Session.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import requests.adapters
import schemathesis
import urllib3
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, negative_data_rejection, response_headers_conformance,
    response_schema_conformance, status_code_conformance,
)

from kvmm.api.client import request
from tests.integration.conftest import REPO
from tests.integration.fc_client import (
    FIRECRACKER, Firecracker, call, image, short_dir, wait_for_api,
)

pytestmark = pytest.mark.kvm

OPENAPI = os.path.join(REPO, "kvmm", "api", "openapi.yaml")
PAYLOAD_LIMIT = 51200            # kvmm firecracker's default --http-api-max-payload-size
DISK_SIZE = 4 << 20
IDLE_GUEST = "mode=blkwrite"     # writes 1 MiB, prints FLUSHED, then idles
BUSY_GUEST = "mode=blkbench op=read pattern=rand qd=4 seconds=600"   # reads until killed
GUEST_READY_SECONDS = 30.0
ANSWER_SECONDS = 5.0             # a request to an unloaded monitor
CROWD = 100                      # clients at once
CROWD_SECONDS = 30.0             # all of them answered within this
STALL_ANSWER_SECONDS = 2.0       # another client's answer while one stalls

# schemathesis: examples per operation and state, and a time budget per state
# after which the remaining cases send nothing (the run stays bounded on a slow
# machine; the number sent is checked to be non-trivial).
EXAMPLES = 25
STATE_BUDGET_SECONDS = 30.0

# Body fields that name host files: generated values are moved into the test's
# own directory, so that PUT /logger or /metrics cannot create files elsewhere.
HOST_PATH_FIELDS = ("kernel_image_path", "initrd_path", "path_on_host", "socket", "log_path",
                    "metrics_path")


# A requests transport for Unix sockets. ---------------------------------------
class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args, socket_path: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else None)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixAdapter(requests.adapters.HTTPAdapter):
    """Sends every http:// request of a Session to the Unix socket `path`
    (the URL's host only fills the Host header)."""

    def __init__(self, path: str):
        super().__init__(max_retries=0)
        self.path = path
        self._pool = _UnixPool("localhost", socket_path=path, maxsize=4)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def unix_session(path: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False            # no proxy from the environment
    session.mount("http://", UnixAdapter(path))
    return session


# Monitors. ---------------------------------------------------------------------
class Monitor:
    """A `kvmm firecracker` with its API socket and scratch directory."""

    def __init__(self, workdir: str, name: str = "fc"):
        self.dir = os.path.join(workdir, name)
        os.mkdir(self.dir)
        self.sock = os.path.join(self.dir, "api.sock")
        self.fc = Firecracker(["--api-sock", self.sock, "--id", name], self.dir)
        wait_for_api(self.sock, self.fc)

    def boot(self, kernel: str, boot_args: str) -> None:
        disk = image(os.path.join(self.dir, "disk.img"), DISK_SIZE)
        call(self.sock, "PUT", "/boot-source", {"kernel_image_path": kernel,
                                                "boot_args": boot_args}, expect=204)
        call(self.sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": disk,
                                                  "is_root_device": False}, expect=204)
        call(self.sock, "PUT", "/actions", {"action_type": "InstanceStart"}, expect=204)

    def state(self) -> str:
        status, info = call(self.sock, "GET", "/", expect=200)
        return info["state"]

    def reads(self) -> int:
        _, stats = call(self.sock, "GET", "/kvmm/stats", expect=200)
        return stats["devices"]["virtio-blk:rootfs"]["reads"]

    def assert_serving(self, state: str) -> None:
        """GET / answers, correctly, and the process lives."""
        assert self.fc.proc.poll() is None, self.fc.transcript()
        status, info = request(self.sock, "GET", "/", timeout=ANSWER_SECONDS)
        assert status == 200, (status, info)
        assert set(info) == {"app_name", "id", "state", "vmm_version"}, info
        assert info["state"] == state, (info, self.fc.transcript())

    def assert_guest_runs_on(self, reads_before: int, seconds: float = 10.0) -> None:
        """The guest is Running and its disk reads go on past `reads_before`."""
        self.assert_serving("Running")
        deadline = time.monotonic() + seconds
        while self.reads() <= reads_before:
            assert time.monotonic() < deadline, \
                f"the guest did no disk read in {seconds:g} s\n{self.fc.transcript()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.fc.proc.poll() is None:
            self.fc.signal(signal.SIGTERM)
            try:
                self.fc.wait()
            finally:
                self.fc.kill()


@pytest.fixture(scope="module")
def workdir():
    with short_dir("kvmm-api-live-") as path:
        yield path


@pytest.fixture(scope="module")
def idle_monitor(guest_kernel, workdir):
    """Not started; schemathesis configures it at will."""
    m = Monitor(workdir, "fuzz-idle")
    yield m
    m.stop()


@pytest.fixture(scope="module")
def running_monitor(guest_kernel, workdir):
    """A guest that wrote its disk and idles; schemathesis pokes at it."""
    m = Monitor(workdir, "fuzz-running")
    m.boot(guest_kernel, IDLE_GUEST)
    m.fc.wait_for_console("FLUSHED", GUEST_READY_SECONDS)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def busy(guest_kernel, workdir):
    """A guest that reads its disk until the monitor stops: the hand-made bad
    input goes to this one, and its read counter shows that it runs on."""
    m = Monitor(workdir, "busy")
    m.boot(guest_kernel, BUSY_GUEST)
    deadline = time.monotonic() + GUEST_READY_SECONDS
    while m.reads() == 0:
        assert time.monotonic() < deadline, m.fc.transcript()
        time.sleep(0.05)
    yield m
    m.stop()


# 1. schemathesis. --------------------------------------------------------------
# Checks: no 5xx; the status code, content type, headers and body as documented;
# data that breaks the schema refused with a 4xx. Left out: unsupported_method
# (it expects 405 for a method the document does not list, and kvmm answers 400
# "Invalid request method and/or path", as Firecracker does) and
# positive_data_acceptance (a schema-valid body is refused with a documented 400
# when the host or the VM's state cannot take it: a missing file, InstanceStart
# before a boot source, a pre-boot call after boot).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]

SCHEMA = schemathesis.openapi.from_path(OPENAPI)
# After boot, the runtime endpoints: what Firecracker serves after InstanceStart,
# kvmm's own /kvmm/ paths, and the pre-boot ones (each refused with a 400 that
# must still be documented). The unsupported resources answer alike in both
# states and are covered before boot.
RUNTIME_SCHEMA = SCHEMA.exclude(operation_id_regex="^unsupported")

FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


class Budget:
    """Wall time and requests sent, per state."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start: float | None = None
        self.sent = 0

    def spent(self) -> bool:
        if self.start is None:
            self.start = time.monotonic()
        return time.monotonic() - self.start > self.seconds


BUDGETS = {"idle": Budget(STATE_BUDGET_SECONDS), "running": Budget(STATE_BUDGET_SECONDS)}


def _confine_paths(case, directory: str) -> None:
    """Move generated host paths into `directory` (a string stays a string, so a
    negative case stays negative)."""
    if not isinstance(case.body, dict):
        return
    for key in HOST_PATH_FIELDS:
        value = case.body.get(key)
        if isinstance(value, str):
            safe = "".join(c if c.isalnum() else "_" for c in value)[:40] or "empty"
            case.body[key] = os.path.join(directory, "gen_" + safe)


def _send(case, monitor: Monitor, budget: Budget):
    if budget.spent():
        return None
    _confine_paths(case, monitor.dir)
    with unix_session(monitor.sock) as session:
        response = case.call_and_validate(base_url="http://localhost", session=session,
                                          checks=CHECKS, timeout=ANSWER_SECONDS)
    budget.sent += 1
    return response


@SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_schemathesis_before_boot(case, idle_monitor):
    _send(case, idle_monitor, BUDGETS["idle"])


@RUNTIME_SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_schemathesis_with_a_running_guest(case, running_monitor):
    _send(case, running_monitor, BUDGETS["running"])
    if case.operation.method.upper() == "PATCH" and case.path == "/vm" \
            and running_monitor.state() == "Paused":
        # A generated {"state": "Paused"} was obeyed: resume, so that the next
        # cases (and the check below) meet a running guest.
        call(running_monitor.sock, "PATCH", "/vm", {"state": "Resumed"}, expect=204)


def test_schemathesis_left_the_monitor_before_boot_serving(idle_monitor):
    assert BUDGETS["idle"].sent >= 50, BUDGETS["idle"].sent
    # A generated InstanceStart cannot succeed: no generated path leads to a kernel.
    idle_monitor.assert_serving("Not started")


def test_schemathesis_left_the_guest_running(running_monitor):
    assert BUDGETS["running"].sent >= 50, BUDGETS["running"].sent
    running_monitor.assert_serving("Running")
    assert "RESULT" not in running_monitor.fc.console(), running_monitor.fc.transcript()


# 2. Bad input against a running guest. -------------------------------------------
BAD_FIELDS = [
    # (method, path, body, a word the fault_message must hold)
    ("PATCH", "/vm", {"state": 1}, "`state`"),
    ("PUT", "/actions", {"action_type": ["InstanceStart"]}, "`action_type`"),
    ("PUT", "/actions", {"action_type": "FlushMetrics", "colour": "red"}, "`colour`"),
    ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": 7}, "drive.path_on_host"),
    ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "is_read_only": True}, "is_read_only"),
    ("PATCH", "/drives/rootfs",
     {"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": "lots", "refill_time": 100}}},
     "rate_limiter.bandwidth.size"),
    ("PATCH", "/drives/rootfs",
     {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": -1}}},
     "rate_limiter.ops.refill_time"),
    ("PATCH", "/drives/rootfs",
     {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 2 ** 64, "refill_time": 100}}},
     "rate_limiter.ops.size"),
    ("PATCH", "/drives/rootfs",
     {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 10, "refill_time": 100,
                                                    "burst": 5}}},
     "burst"),
    ("PATCH", "/kvmm/rate-limiters/drive:rootfs",
     {"bandwidth": {"size": 1 << 20, "refill_time": True}},
     "rate_limiter.bandwidth.refill_time"),
    ("PATCH", "/kvmm/rate-limiters/drive:rootfs",
     {"bandwidth": {"size": 1 << 20, "refill_time": 100, "one_time_burst": -5}},
     "rate_limiter.bandwidth.one_time_burst"),
    ("PATCH", "/kvmm/rate-limiters/drive:rootfs", {"iops": {"size": 1, "refill_time": 1}},
     "iops"),
]


@pytest.mark.parametrize("method,path,body,field", BAD_FIELDS,
                         ids=[f"{m} {p} {f}" for m, p, _, f in BAD_FIELDS])
def test_a_bad_field_is_named_and_changes_nothing(busy, method, path, body, field):
    before = call(busy.sock, "GET", "/vm/config", expect=200)[1]
    reads = busy.reads()
    status, answer = call(busy.sock, method, path, body)
    assert status == 400, (status, answer)
    assert set(answer) == {"fault_message"}, answer
    assert field in answer["fault_message"], answer
    assert call(busy.sock, "GET", "/vm/config", expect=200)[1] == before
    busy.assert_guest_runs_on(reads)


def raw_exchange(sock_path: str, data: bytes, seconds: float = ANSWER_SECONDS) -> bytes:
    """Send `data` on a fresh connection, then read until the monitor closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(seconds)
        s.connect(sock_path)
        s.sendall(data)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def first_response(answer: bytes) -> tuple[int, dict]:
    """The status and JSON body of the first HTTP response in `answer`."""
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 "), answer[:300]
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    return int(lines[0].split()[1]), json.loads(rest[:length])


MALFORMED = {
    "not http": b"GARBAGE\r\n\r\n",
    "binary": bytes(range(256)) + b"\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "bad header line": b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "bad content-length": b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    "two content-lengths": b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           b"Content-Length: 3\r\n\r\n{}",
    "bad chunk size": b"PUT /mmds HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\n{}\r\n0\r\n\r\n",
    "http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_is_answered_400_and_the_guest_runs_on(busy, data):
    reads = busy.reads()
    status, body = first_response(raw_exchange(busy.sock, data))
    assert status == 400, body
    assert set(body) == {"fault_message"}, body
    busy.assert_guest_runs_on(reads)


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_an_oversized_body_is_answered_400(busy, how):
    call(busy.sock, "PUT", "/mmds", {"small": 1}, expect=204)
    reads = busy.reads()
    body = json.dumps({"big": "x" * PAYLOAD_LIMIT}).encode()
    head = b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if how == "content-length":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                          for i in range(0, len(body), 4096))
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    status, answer = first_response(raw_exchange(busy.sock, data))
    assert status == 400, answer
    assert "larger than the limit" in answer["fault_message"], answer
    assert call(busy.sock, "GET", "/mmds", expect=200)[1] == {"small": 1}
    busy.assert_guest_runs_on(reads)


@pytest.mark.parametrize("partial", [
    b"GET /machine-con",
    b"PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"half\": ",
])
def test_a_stalled_client_holds_up_no_one_else(busy, partial):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as staller:
        staller.connect(busy.sock)
        staller.sendall(partial)
        time.sleep(0.2)                      # the monitor has read the half request
        for _ in range(3):
            t0 = time.monotonic()
            status, info = request(busy.sock, "GET", "/machine-config",
                                   timeout=STALL_ANSWER_SECONDS)
            assert status == 200, info
            assert time.monotonic() - t0 < STALL_ANSWER_SECONDS
        # The staller's connection is still open, and still unanswered.
        staller.setblocking(False)
        with pytest.raises(BlockingIOError):
            staller.recv(1)
    busy.assert_serving("Running")


def test_a_hundred_clients_at_once_are_answered_while_the_guest_runs(busy):
    reads = busy.reads()
    start = threading.Barrier(CROWD)
    answers: list[tuple] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            start.wait(CROWD_SECONDS)
            with unix_session(busy.sock) as s:
                got = []
                for path in ("/", "/machine-config"):
                    r = s.get("http://localhost" + path, timeout=CROWD_SECONDS)
                    got.append((path, r.status_code, r.json()))
        except Exception as e:                 # reported below, with the others
            got = [("error", repr(e))]
        with lock:
            answers.append(got)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CROWD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, t0 + CROWD_SECONDS - time.monotonic()))
    took = time.monotonic() - t0
    assert len(answers) == CROWD, f"{len(answers)} of {CROWD} clients answered in {took:.1f} s"
    bad = [a for a in answers
           if [(p, s) for p, s, *_ in a] != [("/", 200), ("/machine-config", 200)]]
    assert not bad, bad[:5]
    assert all(a[0][2]["state"] == "Running" and a[1][2]["vcpu_count"] == 1 for a in answers)
    busy.assert_guest_runs_on(reads)


# Sockets and processes. ---------------------------------------------------------
def one_line(stderr: str, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], stderr
    return lines[0]


def test_a_stale_socket_from_a_dead_monitor_is_replaced(guest_kernel, workdir):
    dead = Monitor(workdir, "stale")
    dead.fc.kill()                                 # SIGKILL: the socket file stays
    assert os.path.exists(dead.sock)
    fc = Firecracker(["--api-sock", dead.sock, "--id", "successor"], dead.dir)
    try:
        info = wait_for_api(dead.sock, fc)
        assert info["id"] == "successor" and info["state"] == "Not started", info
    finally:
        fc.signal(signal.SIGTERM)
        assert fc.wait() == 0, fc.transcript()
    assert not os.path.exists(dead.sock)


def test_a_second_monitor_on_a_live_socket_is_refused(busy):
    inode = os.stat(busy.sock).st_ino
    second = subprocess.run(FIRECRACKER + ["--api-sock", busy.sock, "--id", "second"],
                            cwd=REPO, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert second.returncode != 0, second
    one_line(second.stderr, busy.sock, "already listens")
    assert "kvmm-guest" not in second.stdout, second
    assert os.stat(busy.sock).st_ino == inode
    status, info = request(busy.sock, "GET", "/", timeout=ANSWER_SECONDS)
    assert (status, info["id"], info["state"]) == (200, "busy", "Running"), info


def _config(kernel: str, **sections) -> dict:
    return {"boot-source": {"kernel_image_path": kernel, "boot_args": IDLE_GUEST},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, **sections}


BAD_CONFIGS = {
    # name: (file contents given the kernel path, words the error line must hold)
    "not json": (lambda k: "{\"boot-source\": ", ["not valid JSON"]),
    "unknown field": (lambda k: json.dumps(_config(k, **{"colour": "red"})), ["colour"]),
    "vcpu_count 0": (lambda k: json.dumps(_config(k) | {
        "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}), ["vcpu_count"]),
    "missing kernel": (lambda k: json.dumps(_config(k + ".missing")),
                       ["kvmm-guest.elf.missing"]),
    "vsock": (lambda k: json.dumps(_config(k, vsock={"guest_cid": 3, "uds_path": "/tmp/v.s"})),
              ["vsock"]),
}


@pytest.mark.parametrize("program", ["firecracker", "run"])
@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_bad_config_file_is_one_line_and_exit_2(guest_kernel, program, name):
    contents, needles = BAD_CONFIGS[name]
    with short_dir("kvmm-api-cfg-") as d:
        path = os.path.join(d, "vm.json")
        with open(path, "w") as f:
            f.write(contents(guest_kernel))
        sock = os.path.join(d, "api.sock")
        r = subprocess.run([sys.executable, "-m", "kvmm", program, "--config-file", path,
                            "--api-sock", sock], cwd=REPO, capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 2, r
        one_line(r.stderr, *needles)
        assert "kvmm-guest" not in r.stdout, r      # no guest ran
        assert sorted(os.listdir(d)) == ["vm.json"], os.listdir(d)
