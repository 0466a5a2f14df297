"""GuestQuota targets, PATCH semantics, and the control socket's request handling."""
import json
import socket
import types

import pytest

from kvmm.api.control import ControlServer
from kvmm.quota.guest import GuestQuota
from kvmm.quota.limits import LimitError, LimitSpec, bucket_from_rate, spec_from_shorthand


def test_devices_and_groups_are_targets():
    q = GuestQuota()
    q.drive("d0", spec_from_shorthand({"bw": "1M"}))
    q.nic("n0", "rx")
    assert set(q.limiters) == {"drives", "nets:rx", "nets:tx", "drive:d0", "net:n0:rx"}
    assert q.limiters["drive:d0"].parents == (q.limiters["drives"],)
    assert q.limiters["net:n0:rx"].parents == (q.limiters["nets:rx"],)


def test_patch_semantics():
    q = GuestQuota()
    q.drive("d0", LimitSpec(bucket_from_rate(1 << 20), bucket_from_rate(100)))
    lim = q.limiters["drive:d0"]
    ops = lim.ops
    q.patch("drive:d0", {"bandwidth": {"size": 5000, "refill_time": 10}})
    assert lim.bandwidth.size == 5000 and lim.ops is ops          # ops left out: unchanged
    q.patch("drive:d0", {"ops": {"size": 0}})
    assert lim.ops is None and lim.bandwidth.size == 5000         # size 0: removed
    with pytest.raises(LimitError, match="no device or group"):
        q.patch("drive:zz", {})
    with pytest.raises(LimitError, match="unknown field"):
        q.patch("drive:d0", {"bandwith": {}})
    with pytest.raises(LimitError, match="refill_time"):
        q.patch("drive:d0", {"bandwidth": {"size": 10, "refill_time": 0}})


def test_group_limit_applies_to_every_device():
    q = GuestQuota()
    a = q.drive("a")
    b = q.drive("b")
    q.set_group("drives", spec_from_shorthand({"iops": "10"}))   # one op per 100 ms bucket
    assert a.admit_bytes(0) == 0
    assert b.admit_bytes(0) > 0          # the shared bucket is empty now
    with pytest.raises(LimitError):
        q.set_group("disks", LimitSpec())


def test_check_targets():
    q = GuestQuota()
    q.drive("d0")
    q.check_targets(["drive:d0", "drives"])
    with pytest.raises(LimitError, match="does not have"):
        q.check_targets(["net:x:rx"])


class FakeMachine:
    def __init__(self):
        self.quota = GuestQuota()
        self.quota.drive("d0")
        self.stopped = None

    def stats(self):
        return {"limits": self.quota.stats()}

    def pause(self):
        return True

    def resume(self):
        pass

    def stop(self, status, message):
        self.stopped = (status, message)


def test_control_requests(tmp_path):
    m = FakeMachine()
    server = ControlServer(str(tmp_path / "s"), m)
    try:
        ok = server.handle(json.dumps({"cmd": "patch", "target": "drive:d0", "rate_limiter": {
            "ops": {"size": 10, "refill_time": 100}}}).encode())
        assert ok == {"ok": True}
        stats = server.handle(b'{"cmd": "stats"}')
        assert stats["stats"]["limits"]["drive:d0"]["ops_bucket"]["size"] == 10
        assert not server.handle(b"nonsense")["ok"]
        assert not server.handle(b'{"cmd": "explode"}')["ok"]
        assert "no device" in server.handle(
            b'{"cmd": "patch", "target": "drive:x", "rate_limiter": {}}')["error"]
    finally:
        server.close()
    assert not (tmp_path / "s").exists()


def test_stop_is_answered_before_the_machine_stops(tmp_path):
    """The monitor may exit as soon as it stops: the client gets its answer first."""
    m = FakeMachine()
    server = ControlServer(str(tmp_path / "s"), m)
    ours, client = socket.socketpair()
    answered_at_stop = []
    m.stop = lambda status, message: answered_at_stop.append(
        (status, client.recv(100, socket.MSG_DONTWAIT | socket.MSG_PEEK)))
    try:
        ours.setblocking(False)
        server.loop = types.SimpleNamespace(remove_reader=lambda fd: None)
        server._clients[ours.fileno()] = (ours, bytearray())
        client.sendall(b'{"cmd": "stop"}\n')
        server._readable(ours.fileno())
        assert answered_at_stop == [(0, b'{"ok": true}\n')]
    finally:
        server.close()
        client.close()


def test_control_socket_refuses_a_live_path(tmp_path):
    path = str(tmp_path / "s")
    first = ControlServer(path, FakeMachine())
    try:
        with pytest.raises(OSError, match="already listens"):
            ControlServer(path, FakeMachine())
    finally:
        first.close()
