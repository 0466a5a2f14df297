"""kvmm/api/firecracker.py: Firecracker's REST API over a real Unix socket, with a
fake lifecycle object behind it."""
import json
import os
import re
import socket
import threading

import pytest

from kvmm.api import client
from kvmm.api.firecracker import (ACTIONS, MSG_EMPTY_ID, MSG_EMPTY_PATCH, MSG_EMPTY_PUT,
                                  MSG_GET_BODY, MSG_ID_MISMATCH, MSG_INVALID_ID, MSG_POST_BOOT,
                                  MSG_PRE_BOOT, ROUTES, UNSUPPORTED, FirecrackerApi, Phase,
                                  serve)
from kvmm.eventloop import EventLoop

OPENAPI = os.path.join(os.path.dirname(__file__), "..", "..", "kvmm", "api", "openapi.yaml")


class FakeVmm:
    """Records every call; answers the getters with fixed data."""

    def __init__(self):
        self.started = False
        self.calls = []
        self.fail_with = None
        self.mmds = None

    def _record(self, name, *args):
        self.calls.append((name, *args))
        if self.fail_with is not None:
            raise self.fail_with

    def instance_info(self):
        self._record("instance_info")
        return {"app_name": "kvmm", "id": "vm0",
                "state": "Running" if self.started else "Not started", "vmm_version": "0.1.0"}

    def version(self):
        self._record("version")
        return "0.1.0"

    def get_vm_config(self):
        self._record("get_vm_config")
        return {"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, "drives": [],
                "network-interfaces": []}

    def get_machine_config(self):
        self._record("get_machine_config")
        return {"vcpu_count": 1, "mem_size_mib": 128, "smt": False}

    def get_mmds(self):
        self._record("get_mmds")
        return self.mmds

    def stats(self):
        self._record("stats")
        return {"drives": {"root": {"read_bytes": 4096}}}

    def __getattr__(self, name):
        if name.startswith(("put_", "patch_")) or name in (
                "instance_start", "send_ctrl_alt_del", "flush_metrics", "pause", "resume"):
            return lambda *args: self._record(name, *args)
        raise AttributeError(name)


@pytest.fixture(scope="module")
def loop():
    loop = EventLoop("test-api-fc")
    loop.start()
    yield loop
    loop.close()
    assert not loop.errors


@pytest.fixture
def api(loop, tmp_path):
    """(request function, fake vmm) for a served API."""
    vmm = FakeVmm()
    path = str(tmp_path / "fc.sock")
    server = serve(path, loop, vmm)

    def request(method, target, body=None):
        return client.request(path, method, target, body)

    yield request, vmm
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (server.close(), done.set()))
    assert done.wait(5)


def fault(status, message):
    return (status, {"fault_message": message})


BOOT = {"kernel_image_path": "/k", "boot_args": "console=ttyS0"}
MACHINE = {"vcpu_count": 2, "mem_size_mib": 256}
DRIVE = {"drive_id": "root", "path_on_host": "/r.img", "is_root_device": True,
         "is_read_only": False}
NET = {"iface_id": "eth0", "host_dev_name": "tap0"}
LIMITER = {"bandwidth": {"size": 1000, "refill_time": 100}}

# (method, path, body, vmm call expected, phase allowed in)
WRITES = [
    ("PUT", "/boot-source", BOOT, ("put_boot_source", BOOT), "pre"),
    ("PUT", "/machine-config", MACHINE, ("put_machine_config", MACHINE), "pre"),
    ("PATCH", "/machine-config", {"vcpu_count": 4}, ("patch_machine_config", {"vcpu_count": 4}),
     "pre"),
    ("PUT", "/drives/root", DRIVE, ("put_drive", "root", DRIVE), "pre"),
    ("PATCH", "/drives/root", {"drive_id": "root", "rate_limiter": LIMITER},
     ("patch_drive", "root", {"drive_id": "root", "rate_limiter": LIMITER}), "post"),
    ("PUT", "/network-interfaces/eth0", NET, ("put_network_interface", "eth0", NET), "pre"),
    ("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": LIMITER},
     ("patch_network_interface", "eth0", {"iface_id": "eth0", "rx_rate_limiter": LIMITER}),
     "post"),
    ("PUT", "/logger", {"log_path": "/l", "level": "Info"},
     ("put_logger", {"log_path": "/l", "level": "Info"}), "pre"),
    ("PUT", "/metrics", {"metrics_path": "/m"}, ("put_metrics", {"metrics_path": "/m"}), "pre"),
    ("PUT", "/mmds", {"a": 1}, ("put_mmds", {"a": 1}), "any"),
    ("PATCH", "/mmds", {"a": None}, ("patch_mmds", {"a": None}), "any"),
    ("PUT", "/mmds/config", {"network_interfaces": ["eth0"]},
     ("put_mmds_config", {"network_interfaces": ["eth0"]}), "pre"),
    ("PUT", "/actions", {"action_type": "InstanceStart"}, ("instance_start",), "pre"),
    ("PUT", "/actions", {"action_type": "FlushMetrics"}, ("flush_metrics",), "any"),
    ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, ("send_ctrl_alt_del",), "post"),
    ("PATCH", "/vm", {"state": "Paused"}, ("pause",), "post"),
    ("PATCH", "/vm", {"state": "Resumed"}, ("resume",), "post"),
    ("PATCH", "/kvmm/rate-limiters/net:eth0:rx", LIMITER,
     ("patch_rate_limiter", "net:eth0:rx", LIMITER), "post"),
    ("PATCH", "/kvmm/rate-limiters/drives", LIMITER, ("patch_rate_limiter", "drives", LIMITER),
     "post"),
]


@pytest.mark.parametrize("started", [False, True], ids=["pre-boot", "post-boot"])
@pytest.mark.parametrize("method,path,body,call,phase", WRITES,
                         ids=[f"{w[0]} {w[1]} {w[3][0]}" for w in WRITES])
def test_write_routes_follow_the_boot_rules(api, method, path, body, call, phase, started):
    request, vmm = api
    vmm.started = started
    allowed = phase == "any" or (phase == "post") == started
    answer = request(method, path, body)
    if allowed:
        assert answer == (204, None)
        assert vmm.calls == [call]
    else:
        assert answer == fault(400, MSG_POST_BOOT if started else MSG_PRE_BOOT)
        assert vmm.calls == []


@pytest.mark.parametrize("started", [False, True], ids=["pre-boot", "post-boot"])
def test_get_routes(api, started):
    request, vmm = api
    vmm.started = started
    assert request("GET", "/") == (200, {
        "app_name": "kvmm", "id": "vm0", "state": "Running" if started else "Not started",
        "vmm_version": "0.1.0"})
    assert request("GET", "/version") == (200, {"firecracker_version": "0.1.0"})
    assert request("GET", "/vm/config")[1]["machine-config"]["vcpu_count"] == 1
    assert request("GET", "/machine-config") == (200, {"vcpu_count": 1, "mem_size_mib": 128,
                                                       "smt": False})
    assert request("GET", "/mmds") == (200, {})       # an empty store reads as {}
    vmm.mmds = {"latest": {"meta-data": {}}}
    assert request("GET", "/mmds") == (200, {"latest": {"meta-data": {}}})
    stats = request("GET", "/kvmm/stats")
    if started:
        assert stats == (200, {"drives": {"root": {"read_bytes": 4096}}})
    else:
        assert stats == fault(400, MSG_PRE_BOOT)


def test_every_route_is_exercised():
    covered = {(m, p) for m, p, *_ in WRITES} | {
        ("GET", p) for p in ("/", "/version", "/vm/config", "/machine-config", "/mmds",
                             "/kvmm/stats")}
    for route in ROUTES:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", route.pattern)
        assert any(m == route.method and re.fullmatch(pattern, p) for m, p in covered), route


def test_id_mismatch(api):
    request, vmm = api
    assert request("PUT", "/drives/root", dict(DRIVE, drive_id="other")) == \
        fault(400, MSG_ID_MISMATCH)
    assert request("PUT", "/network-interfaces/eth0", dict(NET, iface_id="eth1")) == fault(
        400, "The id from the path [eth0] does not match the id from the body [eth1]!")
    vmm.started = True
    assert request("PATCH", "/drives/root", {"drive_id": "x"}) == fault(400, MSG_ID_MISMATCH)
    assert request("PATCH", "/network-interfaces/eth0", {"iface_id": "x"}) == fault(
        400, "The id from the path [eth0] does not match the id from the body [x]!")
    assert vmm.calls == []


def test_missing_or_mistyped_body_id(api):
    request, vmm = api
    status, obj = request("PUT", "/drives/root", {"path_on_host": "/r"})
    assert status == 400 and "missing field `drive_id`" in obj["fault_message"]
    status, obj = request("PUT", "/drives/root", {"drive_id": 7})
    assert status == 400 and "`drive_id`" in obj["fault_message"]
    assert vmm.calls == []


def test_path_ids_are_checked(api):
    request, vmm = api
    assert request("PUT", "/drives/a-b", dict(DRIVE, drive_id="a-b")) == \
        fault(400, MSG_INVALID_ID)
    assert request("PUT", "/drives", DRIVE) == fault(400, MSG_EMPTY_ID)
    assert request("PUT", "/drives/", DRIVE) == fault(400, MSG_EMPTY_ID)
    assert vmm.calls == []


def test_body_errors_come_before_the_boot_rules(api):
    request, vmm = api
    vmm.started = True
    assert request("PUT", "/drives/root", dict(DRIVE, drive_id="x")) == \
        fault(400, MSG_ID_MISMATCH)


@pytest.mark.parametrize("body,problem", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, got an array"),
    (b'"text"', "expected a JSON object, got a string"),
    (b"null", "expected a JSON object, got null"),
    (b'{"a": NaN}', "NaN is not a JSON number"),
    (b'{"a": "\xff"}', "not valid JSON"),
    (b"[" * 20000 + b"]" * 20000, "nests too deeply"),
])
def test_bodies_that_are_not_a_json_object(api, body, problem):
    request, vmm = api
    status, obj = request("PUT", "/boot-source", body)
    assert status == 400
    assert obj["fault_message"].startswith(
        "An error occurred when deserializing the json body of a request: ")
    assert problem in obj["fault_message"]
    assert vmm.calls == []


def test_empty_bodies_and_get_bodies(api):
    request, vmm = api
    assert request("PUT", "/boot-source") == fault(400, MSG_EMPTY_PUT)
    assert request("PATCH", "/mmds") == fault(400, MSG_EMPTY_PATCH)
    assert request("GET", "/machine-config", b"{}") == fault(400, MSG_GET_BODY)
    assert request("PATCH", "/machine-config", {}) == fault(400, MSG_EMPTY_PATCH)
    assert vmm.calls == []


@pytest.mark.parametrize("body,problem", [
    ({"action_type": "Reboot"}, "unknown variant `Reboot`, expected one of `FlushMetrics`, "
                                "`InstanceStart`, `SendCtrlAltDel`"),
    ({}, "missing field `action_type`"),
    ({"action_type": "InstanceStart", "payload": "x"}, "unknown field `payload`"),
    ({"action_type": 1}, "`action_type`"),
])
def test_bad_actions(api, body, problem):
    request, vmm = api
    status, obj = request("PUT", "/actions", body)
    assert status == 400 and problem in obj["fault_message"]
    assert vmm.calls == []


def test_bad_vm_state(api):
    request, vmm = api
    vmm.started = True
    status, obj = request("PATCH", "/vm", {"state": "Stopped"})
    assert status == 400 and "unknown variant `Stopped`, expected `Paused` or `Resumed`" in \
        obj["fault_message"]
    status, obj = request("PATCH", "/vm", {"paused": True})
    assert status == 400 and "missing field `state`" in obj["fault_message"]
    assert vmm.calls == []


@pytest.mark.parametrize("method,path,message", [
    ("GET", "/nope", "Invalid request method and/or path: GET nope."),
    ("GET", "/drives", "Invalid request method and/or path: GET drives."),
    ("GET", "/vm", "Invalid request method and/or path: GET vm."),
    ("PUT", "/version", "Invalid request method and/or path: PUT version."),
    ("DELETE", "/drives/root", "Invalid request method and/or path: DELETE drives."),
    ("POST", "/actions", "Invalid request method and/or path: POST actions."),
    ("GET", "/machine-config/extra", "Invalid request method and/or path: GET machine-config."),
    ("PUT", "/kvmm/stats", "Invalid request method and/or path: PUT kvmm."),
])
def test_unknown_paths_and_methods(api, method, path, message):
    request, vmm = api
    body = None if method in ("GET", "DELETE") else {"a": 1}
    assert request(method, path, body) == fault(400, message)
    assert vmm.calls == []


@pytest.mark.parametrize("method,path", [
    ("GET", "/balloon"), ("PUT", "/balloon"), ("PATCH", "/balloon"),
    ("GET", "/balloon/statistics"), ("PATCH", "/balloon/statistics"),
    ("PATCH", "/balloon/hinting/start"), ("PUT", "/vsock"), ("PUT", "/entropy"),
    ("PUT", "/snapshot/create"), ("PUT", "/snapshot/load"), ("PUT", "/cpu-config"),
    ("PUT", "/hotplug/memory"), ("GET", "/hotplug/memory"), ("PUT", "/pmem/p0"),
    ("PUT", "/serial"),
])
def test_unsupported_devices(api, method, path):
    request, vmm = api
    status, obj = request(method, path, None if method == "GET" else {"a": 1})
    assert status == 400
    assert obj["fault_message"].startswith("kvmm does not support ")
    assert "yet" in obj["fault_message"] and path in obj["fault_message"]
    assert vmm.calls == []


def test_vmm_value_error_is_400_with_its_text(api):
    request, vmm = api
    vmm.fail_with = ValueError("machine-config: vcpu_count 0 is out of range 1..32")
    assert request("PUT", "/machine-config", MACHINE) == fault(
        400, "machine-config: vcpu_count 0 is out of range 1..32")


def test_vmm_failure_is_500_and_the_server_goes_on(api, caplog):
    request, vmm = api
    vmm.fail_with = RuntimeError("disk on fire")
    status, obj = request("PUT", "/boot-source", BOOT)
    assert status == 500 and "disk on fire" in obj["fault_message"]
    assert any("internal error" in r.getMessage() for r in caplog.records)
    vmm.fail_with = None
    assert request("GET", "/version")[0] == 200


def test_targets_with_query_or_absolute_form(api):
    request, vmm = api
    assert request("GET", "/version?x=1") == (200, {"firecracker_version": "0.1.0"})
    assert request("GET", "http://localhost/version") == (200, {"firecracker_version": "0.1.0"})


def test_a_firecracker_boot_sequence_over_one_connection(api, tmp_path):
    """The calls a Firecracker SDK makes, on one kept-alive connection."""
    request, vmm = api
    path = str(tmp_path / "fc.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    steps = [("PUT", "/machine-config", MACHINE), ("PUT", "/boot-source", BOOT),
             ("PUT", "/drives/root", DRIVE), ("PUT", "/network-interfaces/eth0", NET),
             ("PUT", "/actions", {"action_type": "InstanceStart"})]
    for method, target, body in steps:
        data = json.dumps(body).encode()
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 204"), head
    sock.close()
    assert [c[0] for c in vmm.calls] == ["put_machine_config", "put_boot_source", "put_drive",
                                         "put_network_interface", "instance_start"]


def test_handle_without_a_socket():
    vmm = FakeVmm()
    api = FirecrackerApi(vmm)
    assert api.handle("GET", "/version", b"").status == 200
    assert api.handle("PUT", "/actions", b'{"action_type": "InstanceStart"}').status == 204
    assert vmm.calls[-1] == ("instance_start",)


def test_phases_match_firecracker():
    phases = {(r.method, r.pattern): r.phase for r in ROUTES}
    assert phases[("PUT", "/drives/{drive_id}")] is Phase.PRE
    assert phases[("PATCH", "/drives/{drive_id}")] is Phase.POST
    assert phases[("PATCH", "/vm")] is Phase.POST
    assert phases[("PUT", "/mmds")] is Phase.ANY
    assert ACTIONS["InstanceStart"][0] is Phase.PRE
    assert ACTIONS["FlushMetrics"][0] is Phase.ANY      # Firecracker flushes either way
    assert all(r.phase is Phase.POST for r in ROUTES if r.pattern.startswith("/kvmm/"))


# The OpenAPI document. -------------------------------------------------------------
def _openapi_operations(text):
    """(path, method) pairs of the document: from PyYAML where it is installed, else
    from the layout of the file (paths at two spaces, methods at four)."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        assert doc["openapi"].startswith("3.")
        return {(path, method.upper()) for path, item in doc["paths"].items()
                for method in item if method in ("get", "put", "patch", "post", "delete")}
    ops, path, in_paths = set(), None, False
    for line in text.splitlines():
        if line.startswith("paths:"):
            in_paths = True
        elif in_paths and line and not line.startswith((" ", "#")):
            break
        elif in_paths and re.fullmatch(r"  (/\S*):", line):
            path = line.strip()[:-1]
        elif in_paths and path and re.fullmatch(r"    (get|put|patch|post|delete):", line):
            ops.add((path, line.strip()[:-1].upper()))
    return ops


def test_openapi_parses_and_documents_every_route():
    with open(OPENAPI) as f:
        text = f.read()
    assert "\t" not in text
    ops = _openapi_operations(text)
    for route in ROUTES:
        assert (route.pattern, route.method) in ops, route
    documented_resources = {path.strip("/").split("/")[0] for path, _ in ops}
    assert set(UNSUPPORTED) <= documented_resources
    # Every documented path is either served or an unsupported resource.
    served = {(r.pattern, r.method) for r in ROUTES}
    for path, method in ops:
        assert (path, method) in served or path.strip("/").split("/")[0] in UNSUPPORTED


def test_openapi_refs_resolve():
    with open(OPENAPI) as f:
        text = f.read()
    refs = set(re.findall(r'\$ref: "#/components/(\w+)/(\w+)"', text))
    assert refs
    for kind, name in refs:
        assert re.search(rf"^  {kind}:\n(?:(?:    .*|\s*)\n)*?    {name}:\n", text, re.M), \
            (kind, name)
