"""kvmm/api/http.py: HTTP/1.1 on a Unix socket, served on a real EventLoop thread."""
import http.client
import json
import os
import socket
import threading
import time

import pytest

from kvmm.api import client
from kvmm.api.http import HttpServer, Response
from kvmm.eventloop import EventLoop


def on_loop(loop, fn):
    """Run fn on the loop thread and return its result."""
    done = threading.Event()
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:      # handed back to the test thread
            box["error"] = e
        done.set()

    loop.call_soon_threadsafe(call)
    assert done.wait(5), "the loop did not run the call"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def echo(method, target, body):
    if target == "/empty":
        return Response(204)
    if target == "/boom":
        raise RuntimeError("handler failure")
    if target.startswith("/big/"):
        return Response(200, {"data": "x" * int(target.split("/")[2])})
    return Response(200, {"method": method, "target": target, "length": len(body)})


@pytest.fixture
def loop():
    loop = EventLoop("test-api-http")
    loop.start()
    yield loop
    loop.close()
    assert not loop.errors, "a callback on the loop raised"


@pytest.fixture
def make_server(loop, tmp_path):
    servers = []

    def make(handler=echo, **kwargs):
        server = HttpServer(str(tmp_path / f"api{len(servers)}.sock"), loop, handler, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        on_loop(loop, server.close)


def connect(path, timeout=5.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def read_until_closed(sock, limit=1 << 24):
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock):
    """One response off a raw socket: (status, headers dict, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self):
        self.sock = connect(self.path)


def test_keep_alive_serves_several_requests_on_one_connection(make_server):
    server = make_server()
    conn = UnixConnection(server.path)
    for i in range(5):
        conn.request("PUT", f"/r{i}", body=b'{"a": 1}')
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(response.read()) == {"method": "PUT", "target": f"/r{i}",
                                               "length": 8}
    conn.request("GET", "/empty")
    response = conn.getresponse()
    assert response.status == 204 and response.read() == b""
    assert response.getheader("Content-Type") is None
    assert server.connections == 1
    conn.close()


def test_expect_100_continue_is_answered(make_server):
    server = make_server()
    sock = connect(server.path)
    sock.sendall(b"PUT /c HTTP/1.1\r\nHost: kvmm\r\nContent-Length: 2000\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        interim += sock.recv(1)
    assert interim.startswith(b"HTTP/1.1 100 ")
    sock.sendall(b"a" * 2000)
    status, _, body, _ = read_response(sock)
    assert status == 200 and json.loads(body)["length"] == 2000
    sock.close()


def test_pipelined_requests_are_answered_in_order(make_server):
    server = make_server()
    sock = connect(server.path)
    sock.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: kvmm\r\n\r\n".encode()
                          for i in range(10)))
    rest = b""
    for i in range(10):
        status, _, body, rest = read_response(_Prefixed(sock, rest))
        assert status == 200 and json.loads(body)["target"] == f"/p{i}"
    sock.close()


class _Prefixed:
    """A socket whose first reads return bytes already received."""

    def __init__(self, sock, prefix):
        self.sock, self.prefix = sock, prefix

    def recv(self, n):
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return self.sock.recv(n)


def test_body_larger_than_the_limit_is_400_and_closes(make_server):
    server = make_server(max_body=100)
    sock = connect(server.path)
    sock.sendall(b"PUT /x HTTP/1.1\r\nHost: kvmm\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000)
    status, headers, body, _ = read_response(sock)
    assert status == 400
    message = json.loads(body)["fault_message"]
    assert "size 5000" in message and "limit of 100" in message
    assert "--http-api-max-payload-size" in message
    assert headers["connection"] == "close"
    assert read_until_closed(sock) == b""
    sock.close()
    assert wait_for(lambda: server.connections == 0)


def test_chunked_body_larger_than_the_limit_is_400(make_server):
    server = make_server(max_body=100)
    sock = connect(server.path)
    chunk = b"a" * 80
    sock.sendall(b"PUT /x HTTP/1.1\r\nHost: kvmm\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"50\r\n" + chunk + b"\r\n" + b"50\r\n" + chunk + b"\r\n0\r\n\r\n")
    status, _, body, _ = read_response(sock)
    assert status == 400 and "limit of 100" in json.loads(body)["fault_message"]
    sock.close()


def test_body_of_exactly_the_limit_is_served(make_server):
    server = make_server(max_body=100)
    status, obj = client.request(server.path, "PUT", "/x", b"a" * 100)
    assert status == 200 and obj["length"] == 100


def test_default_limit_is_firecrackers(make_server):
    server = make_server()
    assert server.max_body == 51200
    status, obj = client.request(server.path, "PUT", "/x", b"a" * 51200)
    assert status == 200
    status, obj = client.request(server.path, "PUT", "/x", b"a" * 51201)
    assert status == 400


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: kvmm\r\nContent-Length: nope\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",                       # HTTP/1.1 without Host
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS hello
])
def test_malformed_http_is_400_and_closes(make_server, raw):
    server = make_server()
    sock = connect(server.path)
    sock.sendall(raw)
    status, headers, body, _ = read_response(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["fault_message"].startswith("Malformed HTTP request")
    assert read_until_closed(sock) == b""
    sock.close()
    # The server goes on.
    assert client.request(server.path, "GET", "/after")[0] == 200


def test_stalled_client_blocks_nobody_and_is_dropped(make_server):
    server = make_server(request_timeout=1.5)
    stalled = connect(server.path)
    stalled.sendall(b"PUT /slow HTTP/1.1\r\nHost: kvmm\r\nContent-Le")
    stalled_body = connect(server.path)
    stalled_body.sendall(b"PUT /slow HTTP/1.1\r\nHost: kvmm\r\nContent-Length: 10\r\n\r\nabc")
    t0 = time.monotonic()
    assert client.request(server.path, "GET", "/other") == (
        200, {"method": "GET", "target": "/other", "length": 0})
    assert time.monotonic() - t0 < 1.0
    # Both stalled clients are dropped once the request timeout passes.
    for sock in (stalled, stalled_body):
        assert read_until_closed(sock) == b""
        sock.close()
    assert wait_for(lambda: server.connections == 0)


def test_idle_keep_alive_connection_is_kept(make_server):
    server = make_server(request_timeout=0.2)
    conn = UnixConnection(server.path)
    conn.request("GET", "/one")
    assert conn.getresponse().read()
    time.sleep(0.5)
    conn.request("GET", "/two")
    assert json.loads(conn.getresponse().read())["target"] == "/two"
    conn.close()


def test_a_hundred_concurrent_clients_are_all_answered(make_server):
    server = make_server()
    socks = [connect(server.path, timeout=10) for _ in range(100)]
    answers = [None] * 100
    start = threading.Barrier(100)

    def run(i):
        start.wait()
        socks[i].sendall(f"PUT /c{i} HTTP/1.1\r\nHost: kvmm\r\nContent-Length: 2\r\n\r\n{{}}"
                         .encode())
        status, _, body, _ = read_response(socks[i])
        answers[i] = (status, json.loads(body)["target"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert answers == [(200, f"/c{i}") for i in range(100)]
    for sock in socks:
        sock.close()


def test_an_unread_answer_is_buffered_while_others_are_served(make_server):
    server = make_server()
    size = 8 << 20       # far more than a socket buffer holds
    slow = connect(server.path)
    slow.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: kvmm\r\n\r\n".encode())
    time.sleep(0.2)
    assert client.request(server.path, "GET", "/meanwhile")[0] == 200
    status, _, body, _ = read_response(slow)
    assert status == 200 and len(json.loads(body)["data"]) == size
    # The connection still serves the next request.
    slow.sendall(b"GET /next HTTP/1.1\r\nHost: kvmm\r\n\r\n")
    assert json.loads(read_response(slow)[2])["target"] == "/next"
    slow.close()


def test_a_client_that_never_reads_is_dropped(make_server):
    server = make_server(write_timeout=0.3)
    slow = connect(server.path)
    slow.sendall(f"GET /big/{8 << 20} HTTP/1.1\r\nHost: kvmm\r\n\r\n".encode())
    assert wait_for(lambda: server.connections == 0, timeout=5)
    slow.close()


def test_handler_exception_is_500_and_the_server_goes_on(make_server):
    server = make_server()
    status, obj = client.request(server.path, "GET", "/boom")
    assert status == 500 and "GET /boom" in obj["fault_message"]
    assert client.request(server.path, "GET", "/fine")[0] == 200


def test_http_1_0_is_answered_then_closed(make_server):
    server = make_server()
    sock = connect(server.path)
    sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
    data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and b'"/old"' in data
    sock.close()


def test_connection_close_from_the_client_is_honoured(make_server):
    server = make_server()
    sock = connect(server.path)
    sock.sendall(b"GET /bye HTTP/1.1\r\nHost: kvmm\r\nConnection: close\r\n\r\n")
    data = read_until_closed(sock)
    assert b'"/bye"' in data
    sock.close()


def test_stale_socket_file_is_replaced(make_server, tmp_path):
    path = tmp_path / "api0.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()                      # the file stays, nobody listens
    assert path.exists()
    server = make_server()
    assert server.path == str(path)
    assert client.request(server.path, "GET", "/")[0] == 200


def test_live_socket_is_an_error(loop, tmp_path):
    path = tmp_path / "live.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(OSError) as info:
            HttpServer(str(path), loop, echo)
        message = str(info.value)
        assert str(path) in message and "\n" not in message and "listens" in message
        assert path.exists()
    finally:
        live.close()


def test_a_file_that_is_not_a_socket_is_an_error(loop, tmp_path):
    path = tmp_path / "file"
    path.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        HttpServer(str(path), loop, echo)
    assert path.read_text() == "keep me"


def test_close_unlinks_the_socket_and_drops_clients(loop, tmp_path):
    server = HttpServer(str(tmp_path / "c.sock"), loop, echo)
    sock = connect(server.path)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: kvmm\r\n\r\n")
    read_response(sock)
    on_loop(loop, server.close)
    assert not os.path.exists(server.path)
    assert read_until_closed(sock) == b""
    sock.close()
    on_loop(loop, server.close)       # twice is fine


def test_client_reports_nothing_listening(tmp_path):
    with pytest.raises(OSError) as info:
        client.request(str(tmp_path / "none.sock"), "GET", "/")
    assert "none.sock" in str(info.value) and "no kvmm API listens" in str(info.value)


def test_client_sends_json_and_reads_204(make_server):
    seen = []

    def handler(method, target, body):
        seen.append((method, target, json.loads(body)))
        return Response(204)

    server = make_server(handler)
    assert client.request(server.path, "PATCH", "/x", {"a": [1, 2]}) == (204, None)
    assert seen == [("PATCH", "/x", {"a": [1, 2]})]
