"""A client for kvmm's REST API on its Unix socket (`kvmm stats`, `kvmm limit`).

    status, obj = request("/run/vm.sock", "GET", "/kvmm/stats")
    request("/run/vm.sock", "PATCH", "/kvmm/rate-limiters/drive:root",
            {"bandwidth": {"size": 10485760, "refill_time": 1000}})

The answer comes back as (HTTP status, parsed JSON body or None); an error
answer is not an exception, its body is {"fault_message": "..."}.
"""
from __future__ import annotations

import http.client
import json
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, sock_path: str, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self.sock_path = sock_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.sock_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(sock_path: str, method: str, path: str, body=None,
            timeout: float = 5.0) -> tuple[int, object]:
    """Send one request and return (status, JSON body or None).

    `body` is a JSON-serialisable object, or bytes/str sent as they are.
    Raises OSError when nothing listens on `sock_path` or no answer comes
    within `timeout` seconds, and ValueError when the answer is not JSON.
    """
    if body is None:
        payload = None
    elif isinstance(body, (bytes, bytearray)):
        payload = bytes(body)
    elif isinstance(body, str):
        payload = body.encode()
    else:
        payload = json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise OSError(e.errno, f"{sock_path}: no kvmm API listens there ({e.strerror}); "
                                   "is the VM running with --api-sock at this path?") from None
        except OSError as e:
            raise OSError(e.errno, f"{sock_path}: cannot connect ({e.strerror or e})") from None
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            raise TimeoutError(f"{sock_path}: no answer to {method} {path} within "
                               f"{timeout:g} s") from None
        except (http.client.HTTPException, ConnectionError) as e:
            raise ConnectionError(f"{sock_path}: the connection broke during {method} {path} "
                                  f"({type(e).__name__}: {e}); the VM may have stopped") from None
    finally:
        conn.close()
    if not data:
        return response.status, None
    try:
        return response.status, json.loads(data)
    except ValueError:
        raise ValueError(f"{sock_path}: {method} {path} answered {response.status} with a "
                         f"body that is not JSON: {data[:200]!r}") from None
