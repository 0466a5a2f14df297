"""quota: configured vs achieved rate under kvmm's rate limiters, measured by
the guest (`mode=blkbench`) driving its disk as hard as it can, next to the rate
the same harness gets with Firecracker's fixed 100 ms back-off after an empty
bucket (`--throttle-backoff-ms 100`), and the monitor's CPU use while it
throttles the flood. kvmm only: QEMU's throttling works differently.

One JSON object per setting:
  {"name", "configured", "achieved", "ratio" (achieved/configured),
   "backoff100_achieved", "unit", "monitor_cpu_pct"}
`achieved` is the steady rate: what the guest moved beyond what the full
bucket (and one-time burst) let through at the start, over the run's time.
"""
from __future__ import annotations

import json
import os
import tempfile

from bench.common import BenchError, note, parse_verdict, spawn

SECONDS = 3
MiB = 1 << 20

# name, rate limiter (Firecracker JSON), blkbench parameters, what is limited
SETTINGS = (
    ("bw_10MiB_64K", {"bandwidth": {"size": MiB, "refill_time": 100}},
     "op=read bs=65536 qd=4", "bytes"),
    ("bw_50MiB_1M", {"bandwidth": {"size": 5 * MiB, "refill_time": 100}},
     "op=read bs=1048576 qd=4", "bytes"),
    ("bw_4MiB_small_bucket", {"bandwidth": {"size": 65536, "refill_time": 16}},
     "op=read bs=65536 qd=4", "bytes"),
    ("bw_1MiB_requests_above_bucket", {"bandwidth": {"size": 262144, "refill_time": 250}},
     "op=write bs=1048576 qd=2", "bytes"),
    ("ops_500", {"ops": {"size": 50, "refill_time": 100}},
     "op=read pattern=rand bs=4096 qd=4", "ops"),
    ("ops_1000_small_bucket", {"ops": {"size": 10, "refill_time": 10}},
     "op=read pattern=rand bs=4096 qd=4", "ops"),
)


def _configured(limiter: dict, what: str, params: str) -> tuple[float, int]:
    """(tokens per second, what the bucket lets through at the start: the full
    bucket and burst, or one request larger than the bucket)."""
    bucket = limiter["bandwidth" if what == "bytes" else "ops"]
    request = int(dict(p.split("=") for p in params.split())["bs"]) if what == "bytes" else 1
    start = max(bucket["size"], request) + bucket.get("one_time_burst", 0)
    return bucket["size"] * 1000 / bucket["refill_time"], start


def _run(setup, image: str, limiter: dict, params: str, backoff_ms: int, tmp: str):
    stats_file = os.path.join(tmp, "stats.json")
    argv = [setup.monitors[0].python, "-S", "-m", "kvmm", "run", "--kernel", str(setup.kernel),
            "--mem", "128M", "--drive", f"path={image},id=d0",
            "--rate-limit", f"drive:d0={json.dumps(limiter)}",
            "--cmdline", f"mode=blkbench {params} seconds={SECONDS}",
            "--throttle-backoff-ms", str(backoff_ms), "--stats-file", stats_file,
            "--timeout", f"{SECONDS + setup.timeout:g}"]
    proc = spawn(argv, SECONDS + setup.timeout + 5)
    verdict = parse_verdict(proc.stdout.decode("utf-8", "replace"))
    if proc.returncode != 0 or verdict is None or not verdict.passed:
        raise BenchError(f"kvmm blkbench {params} failed (status {proc.returncode}): "
                         f"{proc.stdout[-300:]!r} {proc.stderr[-300:]!r}")
    with open(stats_file) as f:
        cpu = json.load(f)["cpu"]
    return verdict, cpu["seconds"] / cpu["wall"] * 100


def run(setup):
    with tempfile.TemporaryDirectory(prefix="kvmm-bench-", dir="/var/tmp") as tmp:
        image = os.path.join(tmp, "quota.img")
        with open(image, "wb") as f:
            f.write(os.urandom(MiB) * 64)
        for name, limiter, params, what in SETTINGS:
            rate, start_tokens = _configured(limiter, what, params)
            achieved = {}
            cpu = None
            for backoff in (0, 100):
                verdict, cpu_pct = _run(setup, image, limiter, params, backoff, tmp)
                moved = verdict.number("bytes" if what == "bytes" else "ops")
                seconds = verdict.number("us") / 1e6
                achieved[backoff] = max(moved - start_tokens, 0) / seconds
                if backoff == 0:
                    cpu = cpu_pct
            unit = "B/s" if what == "bytes" else "ops/s"
            note(f"quota {name}: configured {rate:.0f} {unit}, achieved {achieved[0]:.0f}, "
                 f"with a 100 ms back-off {achieved[100]:.0f}")
            yield {"name": f"quota.{name}", "configured": round(rate, 1),
                   "achieved": round(achieved[0], 1), "ratio": round(achieved[0] / rate, 4),
                   "backoff100_achieved": round(achieved[100], 1), "unit": unit,
                   "monitor_cpu_pct": round(cpu, 2)}
