"""`kvmm stats` and `kvmm limit`: clients of a running monitor's API socket."""
from __future__ import annotations

import json
import os
import sys

from kvmm.cli.options import Option

OPTIONS = (
    Option("--api-sock", "the API socket of the running kvmm (its --api-sock)", "PATH"),
)

STATS_HELP = """usage: kvmm stats --api-sock PATH

Print the counters of a running guest as JSON (GET /kvmm/stats): per device
(requests, bytes, errors), per rate limiter (bytes and ops passed, times
throttled, time spent throttled, current budgets) and memory (monitor
RSS/PSS, guest RAM touched, the cgroup's usage).
"""

LIMIT_HELP = """usage: kvmm limit --api-sock PATH TARGET JSON

Change a rate limiter of a running guest (PATCH /kvmm/rate-limiters/TARGET).
TARGET is drive:ID, net:ID:rx, net:ID:tx, drives or nets:rx|tx; JSON is
Firecracker's RateLimiter object, e.g.
'{"bandwidth": {"size": 1048576, "refill_time": 100}}'. A bucket left out is
unchanged; a bucket of size 0 removes that limit.
"""


def _die(message: str, status: int = 2) -> int:
    print(f"kvmm: {message}", file=sys.stderr)
    return status


def _call(args, method: str, path: str, body=None):
    from kvmm.api.client import request
    if not args.api_sock:
        return None, _die("give --api-sock PATH of the running kvmm")
    try:
        status, answer = request(args.api_sock, method, path, body)
    except OSError as e:
        return None, _die(f"cannot reach kvmm at {args.api_sock}: {e.strerror or e}", 1)
    if status >= 300:
        fault = answer.get("fault_message") if isinstance(answer, dict) else answer
        return None, _die(f"{method} {path}: {fault or f'HTTP {status}'}", 1)
    return answer, None


def stats_command(args, start: float) -> int:
    answer, status = _call(args, "GET", "/kvmm/stats")
    if status is not None:
        return status
    try:
        print(json.dumps(answer, indent=1, sort_keys=True))
        sys.stdout.flush()
    except BrokenPipeError:         # e.g. `kvmm stats ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def limit_command(args, start: float) -> int:
    if len(args.positional) != 2:
        return _die("usage: kvmm limit --api-sock PATH TARGET JSON (e.g. drive:d0 "
                    "'{\"bandwidth\": {\"size\": 1048576, \"refill_time\": 100}}')")
    target, text = args.positional
    try:
        obj = json.loads(text)
    except ValueError as e:
        return _die(f"not JSON: {e}")
    from urllib.parse import quote
    _, status = _call(args, "PATCH", f"/kvmm/rate-limiters/{quote(target, safe=':')}", obj)
    return 0 if status is None else status
