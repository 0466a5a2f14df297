"""The control socket of a running guest: a Unix stream socket speaking one JSON
object per line, served on the guest's I/O thread (so a request never races the
devices it changes).

Requests and answers:
    {"cmd": "stats"}                         -> {"ok": true, "stats": {...}}
    {"cmd": "patch", "target": "drive:d0",
     "rate_limiter": {"bandwidth": {...}}}   -> {"ok": true}
    {"cmd": "pause"} / {"cmd": "resume"}     -> {"ok": true}
    {"cmd": "stop"}                          -> {"ok": true}
An error is {"ok": false, "error": "..."}.
"""
from __future__ import annotations

import json
import os
import socket

MAX_REQUEST = 64 * 1024


class ControlServer:
    def __init__(self, path: str, machine):
        self.path = path
        self.machine = machine
        self._stop_requested = False
        if os.path.exists(path):
            if not _is_stale_socket(path):
                raise OSError(f"--api-sock {path}: a running kvmm already listens there")
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(path)
        except OSError as e:
            self.sock.close()
            raise OSError(f"--api-sock {path}: cannot listen there ({e.strerror})") from None
        self.sock.listen(8)
        self.sock.setblocking(False)
        self._clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def attach(self, loop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._clients[conn.fileno()] = (conn, bytearray())
        self.loop.add_reader(conn.fileno(), lambda fd=conn.fileno(): self._readable(fd))

    def _readable(self, fd: int) -> None:
        conn, buf = self._clients[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        buf += data
        if len(buf) > MAX_REQUEST:
            self._send(conn, {"ok": False, "error": "request too long"})
            self._drop(fd)
            return
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if line.strip():
                self._send(conn, self.handle(line))
                if self._stop_requested:
                    # Answered first: the monitor may exit as soon as it stops.
                    self.machine.stop(0, "stopped through the control socket")
                    return

    def _drop(self, fd: int) -> None:
        conn, _ = self._clients.pop(fd)
        self.loop.remove_reader(fd)
        conn.close()

    @staticmethod
    def _send(conn, answer: dict) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.setblocking(False)

    def handle(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError as e:
            return {"ok": False, "error": f"not JSON: {e}"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object with a cmd"}
        cmd = request.get("cmd")
        m = self.machine
        try:
            if cmd == "stats":
                return {"ok": True, "stats": m.stats()}
            if cmd == "patch":
                target = request.get("target")
                if not isinstance(target, str):
                    return {"ok": False, "error": "patch needs a target (e.g. drive:ID)"}
                m.quota.patch(target, request.get("rate_limiter"))
                return {"ok": True}
            if cmd == "pause":
                return {"ok": bool(m.pause())}
            if cmd == "resume":
                m.resume()
                return {"ok": True}
            if cmd == "stop":
                self._stop_requested = True
                return {"ok": True}
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown cmd {cmd!r}; use stats, patch, pause, "
                                      "resume or stop"}

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _is_stale_socket(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return True
    finally:
        s.close()
    return False


def request(path: str, payload: dict, timeout: float = 5.0) -> dict:
    """Client side: send one request, return the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the monitor closed the connection without answering "
                                      "(it may have stopped)")
            buf += chunk
    return json.loads(buf)
