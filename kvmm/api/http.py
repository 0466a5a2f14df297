"""HTTP/1.1 over a Unix stream socket, served on a guest's EventLoop.

This is the transport of kvmm's Firecracker-compatible REST API
(`kvmm/api/firecracker.py`). h11 does all the HTTP parsing and framing; this
module only moves bytes between sockets and h11 and calls one handler per
request:

    handler(method: str, target: str, body: bytes) -> Response(status, obj)

`obj` is sent as JSON (Content-Type: application/json), or no body at all
when it is None (a 204 always goes without one).

Everything runs on the loop thread and no socket call ever blocks:
  * Connections are kept alive and carry any number of requests, pipelined or
    not; requests on one connection are answered in order.
  * A body larger than `max_body` is answered 400 and the connection closes
    (Firecracker's payload limit: 51200 bytes by default, set with
    --http-api-max-payload-size).
  * Bytes that are not HTTP are answered 400 and the connection closes.
  * A client that stops mid-request only holds its own connection, which is
    dropped after `request_timeout` seconds. An idle keep-alive connection is
    kept, as Firecracker keeps it.
  * An answer the peer does not read is buffered; the connection stops reading
    further requests until the buffer drains, and is dropped when no byte
    moves for `write_timeout` seconds. The EventLoop watches readability only,
    so writability comes from a second epoll set whose own descriptor the loop
    watches (an epoll descriptor is readable while any of its members is ready).

Note that h11 follows RFC 9112 strictly: an HTTP/1.1 request without a Host
header is malformed (curl and the Firecracker SDKs always send one).
"""
from __future__ import annotations

import errno
import json
import os
import select
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import h11


def _log():
    """This module's logger (logging is imported on first use)."""
    import logging
    return logging.getLogger(__name__)


# Firecracker's default API payload limit (src/vmm/src/lib.rs HTTP_MAX_PAYLOAD_SIZE),
# changed with --http-api-max-payload-size.
DEFAULT_MAX_BODY = 51200

RECV_SIZE = 64 * 1024
REQUEST_TIMEOUT = 30.0      # s a started request may take to arrive whole
WRITE_TIMEOUT = 10.0        # s an answer may sit unread without one byte moving
LINGER_TIMEOUT = 2.0        # s a closing connection is drained so the peer sees the answer
LINGER_MAX_BYTES = 1 << 20  # bytes drained from a closing connection at most
MAX_CONNECTIONS = 1024      # beyond this, new connections are closed at once
ACCEPT_RETRY = 0.1          # s before accepting again after accept() failed (EMFILE)

SERVER_NAME = "kvmm"


class Response(NamedTuple):
    """An answer: an HTTP status and a JSON-serialisable object or None."""
    status: int
    body: Any = None


Handler = Callable[[str, str, bytes], Response]


def fault(status: int, message: str) -> Response:
    """An error answer in Firecracker's shape: {"fault_message": "..."}."""
    return Response(status, {"fault_message": message})


class HttpServer:
    """An HTTP/1.1 server on the Unix socket `path`, served on `loop`.

    The socket is bound and registered with the loop at once. A socket file
    left by a dead process is replaced; one a live process listens on is an
    OSError. `close()` (on the loop thread, or once the loop stopped) closes
    every connection and removes the socket file.
    """

    def __init__(self, path: str, loop, handler: Handler, max_body: int = DEFAULT_MAX_BODY,
                 *, request_timeout: float = REQUEST_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        if max_body < 0:
            raise ValueError(f"max_body {max_body} is negative")
        self.path = path
        self.loop = loop
        self.handler = handler
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self._conns: dict[int, _Connection] = {}
        self._closed = False
        self.sock = _listen(path)
        self._inode = os.stat(path).st_ino
        # Sockets with an unsent answer, watched for EPOLLOUT; the loop watches this set.
        self._writers = select.epoll()
        try:
            self.sock.setblocking(False)
            loop.add_reader(self._writers.fileno(), self._on_writable)
            loop.add_reader(self.sock.fileno(), self._on_accept)
        except BaseException:
            loop.remove_reader(self._writers.fileno())
            self._writers.close()
            self.sock.close()
            os.unlink(path)
            raise

    # Accepting. ------------------------------------------------------------
    def _on_accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like. The listening socket stays readable, so stop
                # watching it for a moment rather than spin; the backlog keeps the rest.
                _log().warning("%s: cannot accept a connection: %s", self.path, e.strerror)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY, self._resume_accept)
                return
            if len(self._conns) >= self.max_connections:
                _log().warning("%s: %d connections open already; closing a new one",
                            self.path, len(self._conns))
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(self, sock)
            self._conns[conn.fd] = conn
            self.loop.add_reader(conn.fd, conn.on_readable)

    def _resume_accept(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._on_accept)

    def _on_writable(self) -> None:
        for fd, _mask in self._writers.poll(0):
            conn = self._conns.get(fd)
            if conn is None:
                self._unwatch_write(fd)
            else:
                conn.flush()

    def _watch_write(self, fd: int) -> None:
        try:
            self._writers.register(fd, select.EPOLLOUT)
        except FileExistsError:
            pass

    def _unwatch_write(self, fd: int) -> None:
        try:
            self._writers.unregister(fd)
        except (FileNotFoundError, OSError, ValueError):
            pass

    def _forget(self, conn: _Connection) -> None:
        self._conns.pop(conn.fd, None)

    # Closing. --------------------------------------------------------------
    @property
    def connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in list(self._conns.values()):
            conn.drop()
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_reader(self._writers.fileno())
        self._writers.close()
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:   # still ours, not a successor's
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Connection:
    """One client: an h11 state machine, an output buffer and its timers."""

    def __init__(self, server: HttpServer, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.h11 = h11.Connection(h11.SERVER)
        self.out = bytearray()
        self.reading = True             # registered with the loop for reads
        self.closing = False            # the last answer is queued; close once it is out
        self.lingering = False          # answer sent, write side shut, draining the peer
        self.drained = 0
        self.request: tuple[str, str] | None = None     # method, target of the request in flight
        self.method = ""
        self.body = bytearray()
        self.request_timer = None
        self.write_timer = None
        self.last_write = 0.0
        self.dead = False

    # Reading. --------------------------------------------------------------
    def on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if self.lingering:
            self.drained += len(data)
            if not data or self.drained > LINGER_MAX_BYTES:
                self.drop()
            return
        if not data:
            # EOF: an idle client hung up, or a client gave up mid-request.
            self.drop()
            return
        self.h11.receive_data(data)
        self.process()

    def process(self) -> None:
        """Turn buffered bytes into requests and answer each, while the peer keeps up."""
        while not self.dead and not self.closing and not self.out:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self.fail(400, f"Malformed HTTP request: {e}.")
                break
            if event is h11.NEED_DATA:
                break
            if event is h11.PAUSED:
                # The last answer is complete: the next pipelined request may start.
                if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
                    self.closing = True
                    break
                self.h11.start_next_cycle()
                self.method = ""
                continue
            if isinstance(event, h11.Request):
                self.start_request(event)
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.server.max_body:
                    self.fail(400, _too_large(len(self.body), self.server.max_body))
            elif isinstance(event, h11.EndOfMessage):
                self.answer()
            elif isinstance(event, h11.ConnectionClosed):
                self.closing = True
        self.after_io()

    def start_request(self, event: h11.Request) -> None:
        self.method = event.method.decode("ascii", "replace")
        self.request = (self.method, event.target.decode("latin-1"))
        self.body = bytearray()
        for name, value in event.headers:
            if name == b"content-length":
                size = int(value)           # h11 has checked it is a number
                if size > self.server.max_body:
                    self.fail(400, _too_large(size, self.server.max_body))
                    return
        if self.h11.they_are_waiting_for_100_continue:
            # curl asks before sending a body over 1 KiB, and waits a second if not told.
            self.out += self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))

    def answer(self) -> None:
        method, target = self.request
        body = bytes(self.body)
        self.request, self.body = None, bytearray()
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        try:
            response = self.server.handler(method, target, body)
            status = int(response.status)
            if not 200 <= status <= 599:
                raise ValueError(f"the handler answered status {status}")
            payload = b"" if response.body is None else json.dumps(response.body).encode()
        except Exception:
            _log().exception("%s: handling %s %s failed", self.server.path, method, target)
            status, payload = 500, json.dumps({
                "fault_message": f"Internal error while handling {method} {target}; "
                                 "the kvmm log has the details."}).encode()
        self.send(status, payload, close=False)

    def fail(self, status: int, message: str) -> None:
        """Answer an error the connection cannot recover from, then close it."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            _log().info("%s: %s", self.server.path, message)
            self.send(status, json.dumps({"fault_message": message}).encode(), close=True)
        self.closing = True

    def send(self, status: int, payload: bytes, close: bool) -> None:
        headers = [("Server", SERVER_NAME)]
        if status == 204:
            payload = b""
        else:
            headers.append(("Content-Length", str(len(payload))))
            if payload:
                headers.append(("Content-Type", "application/json"))
        if close:
            headers.append(("Connection", "close"))
        if self.method == "HEAD":
            payload = b""                   # the headers describe the body; none follows
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers))
            if payload:
                data += self.h11.send(h11.Data(data=payload))
            data += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            _log().error("%s: cannot answer %d: %s", self.server.path, status, e)
            self.drop()
            return
        self.out += data
        if close or self.h11.our_state is h11.MUST_CLOSE:
            self.closing = True

    # Writing. --------------------------------------------------------------
    def after_io(self) -> None:
        """Flush what is queued, then settle timers and read interest."""
        if self.dead:
            return
        if self.out:
            self.flush()
        elif self.closing:
            self.linger()
        else:
            self.settle()

    def flush(self) -> None:
        moved = False
        while self.out:
            try:
                sent = self.sock.send(self.out, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.drop()
                return
            del self.out[:sent]
            moved = True
        if moved:
            self.last_write = time.monotonic()
        if self.out:
            self.server._watch_write(self.fd)
            self.set_reading(False)          # no new requests until this answer is read
            if self.write_timer is None:
                self.last_write = time.monotonic()
                self.write_timer = self.server.loop.call_later(
                    self.server.write_timeout, self.on_write_timer)
            return
        self.server._unwatch_write(self.fd)
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.closing:
            self.linger()
            return
        self.set_reading(True)
        self.settle()
        # Later, not now: requests may wait in h11's buffer (pipelining), and other
        # clients get their turn in between.
        self.server.loop.call_soon(self.process_if_alive)

    def process_if_alive(self) -> None:
        if not self.dead and not self.out:
            self.process()

    def on_write_timer(self) -> None:
        self.write_timer = None
        if self.dead or not self.out:
            return
        idle = time.monotonic() - self.last_write
        if idle >= self.server.write_timeout:
            _log().info("%s: a client read nothing for %.0f s; dropping it",
                     self.server.path, idle)
            self.drop()
            return
        self.write_timer = self.server.loop.call_later(
            self.server.write_timeout - idle, self.on_write_timer)

    def set_reading(self, on: bool) -> None:
        if on == self.reading or self.dead:
            return
        self.reading = on
        if on:
            self.server.loop.add_reader(self.fd, self.on_readable)
        else:
            self.server.loop.remove_reader(self.fd)

    # Timers and closing. ---------------------------------------------------
    def settle(self) -> None:
        """Arm the request timer while a request is partly in, cancel it otherwise."""
        partial = (self.h11.their_state is h11.SEND_BODY
                   or (self.h11.their_state is h11.IDLE and bool(self.h11.trailing_data[0])))
        if partial and self.request_timer is None:
            self.request_timer = self.server.loop.call_later(
                self.server.request_timeout, self.on_request_timer)
        elif not partial and self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None

    def on_request_timer(self) -> None:
        self.request_timer = None
        if not self.dead:
            _log().info("%s: a request did not arrive whole within %.0f s; dropping the client",
                     self.server.path, self.server.request_timeout)
            self.drop()

    def linger(self) -> None:
        """The last answer is out: shut the write side and drain what the peer still
        sends, so that closing does not reset the connection before it reads the answer."""
        if self.lingering:
            return
        self.lingering = True
        for timer in (self.request_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.request_timer = self.write_timer = None
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop()
            return
        self.set_reading(True)
        self.server.loop.call_later(LINGER_TIMEOUT, self.drop)

    def drop(self) -> None:
        if self.dead:
            return
        self.dead = True
        for timer in (self.request_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.server._unwatch_write(self.fd)
        if self.reading:
            self.server.loop.remove_reader(self.fd)
        self.server._forget(self)
        self.sock.close()


def _too_large(size: int, limit: int) -> str:
    # Firecracker (micro_http): "Request payload with size N is larger than the limit of M
    # allowed by server."
    return (f"Request payload with size {size} is larger than the limit of {limit} allowed "
            "by server (raise it with --http-api-max-payload-size).")


def _listen(path: str) -> socket.socket:
    """Bind and listen on `path`, replacing a socket file no live process listens on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"API socket {path}: the path exists and is not a "
                                        "socket; remove it or choose another path")
        if _listening(path):
            raise OSError(errno.EADDRINUSE, f"API socket {path}: a running process already "
                                            "listens there; stop it or choose another path")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"API socket {path}: cannot listen there "
                               f"({e.strerror or e})") from None
    return sock


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        raise OSError(e.errno, f"API socket {path}: cannot tell whether a process listens "
                               f"there ({e.strerror or e})") from None
    finally:
        probe.close()
    return True
