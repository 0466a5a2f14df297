"""Reading what a non-blocking pipe holds, for tests of writers that must never block."""
import os


def drain(fd: int) -> bytes:
    """Everything the pipe `fd` (non-blocking) holds now."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data
