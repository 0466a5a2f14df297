#!/usr/bin/env python3
"""The project's guest kernel under a hardware-style KVM: runs inside L1 (in
ci/lane/l1-init.sh's chroot of the host's root), one `kvmm run` per mode, and
checks each verdict line and exit status.

    python -I ci/lane/guest_modes.py --python .venv/bin/python --kernel ELF MODE...

Prints, per mode, `LANE-GK MODE <name> PASS|FAIL <seconds> s <detail>` (on a
failure followed by the tail of the guest's console and kvmm's stderr, each
line prefixed `LANE-GK |`), and at the end `LANE-GK RESULT PASS|FAIL`.
Exit status 0 when every mode passed.

The modes (MODES below): hello (the banner must say world=kvm: hardware KVM,
not the software-virtualization module), smp on 2 vCPUs, timer, mem,
exception (#PF: the guest's report and exit status 3), reset (i8042), blktest
on a virtio-blk disk in /dev/shm, and with --tap: netecho (UDP datagrams from
L1's end of the TAP echoed byte for byte, pings, a STOP datagram) and
hostile-net (broken transmit chains; the monitor must stay up and the guest
must reach its peer afterwards). Standard library only.
"""
from __future__ import annotations

import argparse
import os
import queue
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

ECHO_PORT = 7
TAIL = 25


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Guest:
    """One `kvmm run`, its console read line by line on a thread."""

    def __init__(self, argv: list[str], cwd: str):
        self.argv = argv
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stderr = ""
        self._q: queue.Queue = queue.Queue()
        self._err: list[bytes] = []
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self._q.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._q.put(None)

    def _read_err(self) -> None:
        self._err.append(self.proc.stderr.read())

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The first console line containing `text`, or None (exit or timeout)."""
        for line in self.lines:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self._q.put(None)
                return None
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float) -> int | None:
        """kvmm's exit status, or None if it had to be killed."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            status = None
        for t in self._threads:
            t.join(10)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        self.stderr = b"".join(self._err).decode("utf-8", "replace")
        return status

    def verdict(self) -> dict | None:
        for line in reversed(self.lines):
            words = line.split()
            if len(words) >= 3 and words[0] == "RESULT" and words[2] in ("PASS", "FAIL"):
                v = dict(w.split("=", 1) for w in words[3:] if "=" in w)
                v.update(mode=words[1], result=words[2])
                return v
        return None

    def tail(self) -> list[str]:
        out = [f"console: {ln}" for ln in self.lines[-TAIL:]]
        out += [f"stderr: {ln}" for ln in self.stderr.rstrip().splitlines()[-TAIL:]]
        return out


class Failed(Exception):
    pass


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise Failed(why)


def expect_verdict(g: Guest, status: int | None, mode: str, result: str = "PASS",
                   exit_status: int = 0) -> dict:
    expect(status is not None, "kvmm did not exit in time (killed)")
    v = g.verdict()
    expect(v is not None, f"no verdict line (kvmm exit {status})")
    expect(v["mode"] == mode, f"verdict of mode {v['mode']}, not {mode}")
    expect(v["result"] == result, f"verdict {v['result']}, expected {result}")
    expect(status == exit_status, f"kvmm exit {status}, expected {exit_status}")
    expect("Traceback" not in g.stderr, "a Python traceback on kvmm's stderr")
    return v


# The modes. Each takes (args, run) where run(cmdline, *extra, vcpus=, mem=) starts
# kvmm, and returns a short detail string or raises Failed.
def mode_hello(args, run):
    g = run("mode=hello")
    v = expect_verdict(g, g.finish(args.timeout + 30), "hello")
    banner = next((ln for ln in g.lines if "world=" in ln), "")
    expect("world=kvm" in banner, f"banner {banner!r}: not world=kvm")
    return f"{banner.split(':', 1)[-1].strip()} virtio_mmio={v.get('virtio_mmio')}"


def mode_smp(args, run):
    iters = 100000
    g = run(f"mode=smp iters={iters}", vcpus=2)
    v = expect_verdict(g, g.finish(args.timeout + 30), "smp")
    expect(v.get("cpus") == "2", f"cpus={v.get('cpus')}")
    expect(v.get("sum") == str(2 * iters), f"sum={v.get('sum')}")
    return f"cpus=2 sum={v['sum']} boot_us={v.get('boot_us')} ms={v.get('ms')}"


def mode_timer(args, run):
    # The masking check arms a 500 us one-shot with interrupts disabled, spins
    # 1.5 ms by the TSC, and wants the interrupt inside irq_enable(). In L1 the
    # one-shot is an hrtimer of a kernel that QEMU's TCG runs on a host that is
    # itself a VM; now and then it fires after those 1.5 ms ("masked=late",
    # seen in two lane runs of about ten). Only that outcome gets a second try,
    # and the detail says so; a wrong period, "early", or a second "late" fail.
    notes = ""
    for attempt in (1, 2):
        g = run("mode=timer ticks=20 period_us=10000 tolerance_pct=30")
        status = g.finish(args.timeout + 30)
        v = g.verdict() or {}
        late_only = (v.get("result") == "FAIL" and v.get("masked") == "late" and status == 1
                     and _within(v, 30))
        if attempt == 1 and late_only:
            notes = " (first try: masked=late, the one-shot fired after the 1.5 ms window)"
            continue
        v = expect_verdict(g, status, "timer")
        expect(v.get("masked") == "ok", f"masked={v.get('masked')}")
        break
    return (f"mean_us={v.get('mean_us')} min_us={v.get('min_us')} max_us={v.get('max_us')} "
            f"masked=ok tsc_source={v.get('tsc_source')}{notes}")


def _within(v: dict, tolerance_pct: float) -> bool:
    try:
        mean, period = float(v["mean_us"]), float(v["period_us"])
    except (KeyError, ValueError):
        return False
    return abs(mean - period) * 100 <= tolerance_pct * period


def mode_mem(args, run):
    g = run("mode=mem", mem="32M")
    v = expect_verdict(g, g.finish(args.timeout + 30), "mem")
    expect(v.get("bad") == "0", f"bad={v.get('bad')}")
    expect(int(v.get("top", "0"), 16) == 32 << 20, f"top={v.get('top')}")
    return f"pages={v.get('pages')} bad=0 above_read={v.get('above_read')}"


def mode_exception(args, run):
    g = run("mode=exception kind=pf")
    v = expect_verdict(g, g.finish(args.timeout + 30), "exception", "FAIL", 3)
    report = next((ln for ln in g.lines if ln.startswith("EXCEPTION")), "")
    expect("vector=14" in report and "cr2=" in report, f"report {report!r}")
    expect(v.get("exception") == "14", f"exception={v.get('exception')}")
    return report


def mode_reset(args, run):
    g = run("mode=reset")
    v = expect_verdict(g, g.finish(args.timeout + 30), "reset")
    return f"action={v.get('action')}"


def mode_blktest(args, run):
    disk = "/dev/shm/lane-gk-blk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    try:
        g = run("mode=blktest", "--drive", f"path={disk}", mem="64M")
        v = expect_verdict(g, g.finish(args.timeout + 30), "blktest")
    finally:
        os.unlink(disk)
    expect(v.get("disks") == "1", f"disks={v.get('disks')}")
    return f"bytes={v.get('bytes')} checks0={v.get('checks0')}"


def _ping(addr: str, count: int) -> tuple[int, str]:
    ping = shutil.which("ping")
    if ping is None:
        return -1, "no ping here"
    r = subprocess.run([ping, "-c", str(count), "-W", "5", addr], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"(\d+) (?:packets )?received", r.stdout)
    return (int(m.group(1)) if m else 0), r.stdout.strip().splitlines()[-1:]


def mode_netecho(args, run):
    expect(args.tap is not None, "no --tap")
    local, guest_ip = args.peer, args.ip.split("/")[0]
    g = run(f"mode=netecho ip={args.ip} port={ECHO_PORT} seconds=150",
            "--net", f"tap={args.tap},mac={args.mac}")
    try:
        ready = g.wait_for("netecho ready", args.timeout)
        expect(ready is not None, "no 'netecho ready' line")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((local, 0))
        s.settimeout(10.0)
        rng = random.Random(7)
        sizes = [1, 64, 512, 1000, 1472] + [rng.randint(1, 1472) for _ in range(27)]
        for i, size in enumerate(sizes):
            data = rng.randbytes(size)
            s.sendto(data, (guest_ip, ECHO_PORT))
            try:
                back, who = s.recvfrom(4096)
            except socket.timeout:
                raise Failed(f"datagram {i} ({size} bytes): no echo within 10 s") from None
            expect(back == data and who == (guest_ip, ECHO_PORT),
                   f"datagram {i} ({size} bytes): echo differs ({len(back)} bytes from {who})")
        replies, ping_out = _ping(guest_ip, 3)
        expect(replies != 0, f"no ping answered: {ping_out}")
        s.sendto(b"STOP", (guest_ip, ECHO_PORT))
        s.close()
    except BaseException:
        g.proc.kill()
        g.finish(30)
        raise
    v = expect_verdict(g, g.finish(args.timeout + 30), "netecho")
    expect(v.get("stop") == "datagram", f"stop={v.get('stop')}")
    expect(int(v.get("echoed", 0)) >= len(sizes), f"echoed={v.get('echoed')}")
    pings = "" if replies < 0 else f" ping={replies}/3"
    return (f"datagrams={len(sizes)} (1-1472 bytes, echoed byte-exact){pings} "
            f"guest: echoed={v['echoed']} rx={v.get('rx')} tx={v.get('tx')} "
            f"pings={v.get('pings')} arp={v.get('arp')}")


def mode_hostile_net(args, run):
    expect(args.tap is not None, "no --tap")
    g = run(f"mode=hostile-net ip={args.ip} peer={args.peer} timeout_ms=5000",
            "--net", f"tap={args.tap},mac={args.mac}")
    v = expect_verdict(g, g.finish(args.timeout + 30), "hostile-net")
    expect(v.get("peer") == "ok", f"peer={v.get('peer')} (the guest could not reach "
           f"{args.peer} after the cases)")
    expect(int(v.get("cases", 0)) > 0 and int(v.get("completed", 0)) > 0
           and int(v.get("reset", 0)) > 0, "cases/completed/reset not all > 0")
    return " ".join(f"{k}={v.get(k)}" for k in ("cases", "reset", "completed", "peer",
                                               "skipped"))


MODES = {
    "hello": mode_hello, "smp": mode_smp, "timer": mode_timer, "mem": mode_mem,
    "exception": mode_exception, "reset": mode_reset, "blktest": mode_blktest,
    "netecho": mode_netecho, "hostile-net": mode_hostile_net,
}
NET_MODES = ("netecho", "hostile-net")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True, help="the interpreter that runs kvmm")
    ap.add_argument("--kernel", required=True, help="guest-kernel/build/kvmm-guest.elf")
    ap.add_argument("--repo", default=os.getcwd())
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="kvmm's --timeout per mode, seconds (default 120)")
    ap.add_argument("--tap", help="TAP for the network modes (L1's end has --peer)")
    ap.add_argument("--ip", default="10.0.2.2/24", help="the guest's address")
    ap.add_argument("--peer", default="10.0.2.1", help="L1's address on the TAP")
    ap.add_argument("--mac", default="02:00:0a:00:02:02", help="the guest's MAC")
    ap.add_argument("modes", nargs="+", choices=sorted(MODES))
    args = ap.parse_args(argv)

    failed = []
    for name in args.modes:
        def run(cmdline, *extra, vcpus=1, mem="64M"):
            return Guest([args.python, "-S", "-m", "kvmm", "run", "--kernel", args.kernel,
                          "--mem", mem, "--vcpus", str(vcpus), "--console", "stdout",
                          "--timeout", f"{args.timeout:g}", "--cmdline", cmdline, *extra],
                         args.repo)
        started = time.monotonic()
        guests: list[Guest] = []

        def tracked(*a, **kw):
            g = run(*a, **kw)
            guests.append(g)
            return g
        try:
            detail = MODES[name](args, tracked)
            ok = True
        except Failed as e:
            detail, ok = str(e), False
        except Exception as e:          # the driver's own problem: say so, go on
            detail, ok = f"{type(e).__name__}: {e}", False
        took = time.monotonic() - started
        say(f"LANE-GK MODE {name} {'PASS' if ok else 'FAIL'} {took:.1f} s {detail}")
        if not ok:
            failed.append(name)
            for g in guests:
                if g.proc.poll() is None:
                    g.proc.kill()
                    g.finish(10)
                say(f"LANE-GK | $ {' '.join(g.argv)}")
                for line in g.tail():
                    say(f"LANE-GK | {line}")
    say(f"LANE-GK RESULT {'FAIL ' + ','.join(failed) if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
