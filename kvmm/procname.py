"""Thread and process names (what `ps -o comm`, `top -H` and `pgrep` show)."""
from __future__ import annotations

import ctypes
import os

PR_SET_NAME = 15          # include/uapi/linux/prctl.h
TASK_COMM_LEN = 16        # include/linux/sched.h, with the terminating NUL

_libc = None


def set_thread_name(name: str) -> None:
    """Name the calling thread with prctl(PR_SET_NAME). The kernel keeps the
    first 15 bytes (TASK_COMM_LEN - 1); so does this. For the main thread this
    is also the process's name (comm). Raises OSError if prctl fails."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    raw = name.encode("utf-8", "replace")[:TASK_COMM_LEN - 1]
    if _libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NAME, {raw!r}): {os.strerror(err)}")
