"""`kvmm boot-test`: boot a kernel and wait for a pattern on its console.

For users' CI: PASS when a success pattern appears (and, with --wait-exit,
the guest then stops by itself: poweroff, reset or exit status 0), FAIL on a
failure pattern, a timeout, a crash or a guest that stops first. Prints the
time from the monitor's start to the pattern; optionally writes JUnit XML.

Exit status: 0 pass (or skipped: /dev/kvm unusable and no --require-kvm),
1 fail, 2 nothing ran (bad option, kernel, initrd, or --require-kvm refused).

Only `kvmm boot-test` imports this module (it may use `re`: the `kvmm run`
path stays lean).
"""
from __future__ import annotations

import os
import sys
import threading
import time

DEFAULT_FAILURE = ("Kernel panic - not syncing",)
DEFAULT_TIMEOUT = 120.0
MAX_PARTIAL = 4096          # longest unterminated line still matched (prompts)
JUNIT_CONSOLE_TAIL = 256 * 1024

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class Watcher:
    """Matches console output line by line (and the unterminated last line,
    for prompts) against success and failure patterns. `feed` runs on vCPU
    threads; the first match wins and calls `on_match(kind, pattern, line)`."""

    def __init__(self, success: list[str], failure: list[str], on_match=None,
                 regex: bool = False):
        import re

        def compile_(pattern: str):
            return re.compile(pattern if regex else re.escape(pattern))

        self.success = [(p, compile_(p)) for p in success]
        self.failure = [(p, compile_(p)) for p in failure]
        self._on_match = on_match
        self._partial = bytearray()
        self._lock = threading.Lock()
        self.matched: tuple[str, str, str, float] | None = None   # kind, pattern, line, time

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self.matched is not None and self.matched[0] == FAIL:
                return
            self._partial += data
            if b"\n" in data:
                *lines, rest = bytes(self._partial).split(b"\n")
                self._partial = bytearray(rest)
                for line in lines:
                    if self._check(line):
                        return
            if len(self._partial) <= MAX_PARTIAL:
                self._check(bytes(self._partial))

    def _check(self, raw: bytes) -> bool:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        for pattern, rx in self.failure:
            if rx.search(line):
                self._hit(FAIL, pattern, line)
                return True
        if self.matched is None:
            for pattern, rx in self.success:
                if rx.search(line):
                    self._hit(PASS, pattern, line)
                    return False     # keep watching for failures (with --wait-exit)
        return False

    def _hit(self, kind: str, pattern: str, line: str) -> None:
        self.matched = (kind, pattern, line, time.monotonic())
        if self._on_match is not None:
            self._on_match(kind)

    def set_on_match(self, on_match) -> None:
        """Call `on_match(kind)` for a match, now if one was already seen."""
        with self._lock:
            self._on_match = on_match
            if self.matched is not None:
                on_match(self.matched[0])


class Outcome:
    __slots__ = ("result", "reason", "detail", "boot_time", "elapsed", "console")

    def __init__(self, result: str, reason: str, detail: str = "", boot_time=None,
                 elapsed: float = 0.0, console: bytes = b""):
        self.result = result
        self.reason = reason            # one line
        self.detail = detail            # register dump, console tail...
        self.boot_time = boot_time      # seconds from monitor start to the success pattern
        self.elapsed = elapsed
        self.console = console


def kvm_problem() -> str | None:
    """Why /dev/kvm cannot run guests here, or None."""
    from kvmm.ioctl import HostNotSupported, Kvm
    try:
        kvm = Kvm()
    except HostNotSupported as e:
        return str(e)
    try:
        kvm.check_required_caps()
    except HostNotSupported as e:
        return str(e)
    finally:
        kvm.close()
    return None


def watch(vmm, watcher: Watcher, start: float, wait_exit: bool = False,
          on_stopped=None) -> Outcome:
    """Watch a started kvmm.vmm.Vmm whose console feeds `watcher`, from `start`
    (time.monotonic), until a verdict; the time limit is the spec's timeout.
    `on_stopped(vmm, reason)` runs once the guest stopped, before tear-down."""
    timeout = vmm.spec.host.timeout or DEFAULT_TIMEOUT

    def on_match(kind: str) -> None:
        if kind == FAIL or not wait_exit:
            vmm.stop(0, f"boot-test: {kind}")

    watcher.set_on_match(on_match)
    try:
        left = timeout - (time.monotonic() - start)     # the timeout counts from `start`
        reason = vmm.wait(max(round(left, 3), 0.001))
        if on_stopped is not None:
            on_stopped(vmm, reason)
        m = vmm.machine
        console = bytes(m.console.captured or b"")
        report = list(m.report_lines)
    finally:
        vmm.release_for_exit()
    elapsed = time.monotonic() - start
    matched = watcher.matched
    boot_time = None
    if matched is not None and matched[0] == PASS:
        boot_time = matched[3] - start
    if matched is not None and matched[0] == FAIL:
        return Outcome(FAIL, f"failure pattern {matched[1]!r} seen: {matched[2].strip()}",
                       _tail(console), boot_time, elapsed, console)
    if reason.kind == "timeout":
        what = ("the guest did not stop after the success pattern" if boot_time is not None
                else f"no success pattern within {timeout:g} s")
        return Outcome(FAIL, f"timeout: {what}", reason.message, boot_time, elapsed, console)
    if reason.kind in ("crash", "error"):
        return Outcome(FAIL, f"the guest crashed ({reason.kind})", reason.message, boot_time,
                       elapsed, console)
    if boot_time is None:
        return Outcome(FAIL, f"the guest stopped before a success pattern: {reason.message}",
                       _tail(console), None, elapsed, console)
    if wait_exit:
        clean = reason.kind == "reset" or (reason.kind == "exit" and reason.status == 0)
        if not clean:
            return Outcome(FAIL, f"after the success pattern the guest ended badly: "
                                 f"{reason.message}", _tail(console), boot_time, elapsed,
                           console)
        return Outcome(PASS, f"matched {matched[1]!r} after {boot_time:.3f} s; "
                             f"{reason.message}", "\n".join(report), boot_time, elapsed,
                       console)
    return Outcome(PASS, f"matched {matched[1]!r} after {boot_time:.3f} s",
                   "\n".join(report), boot_time, elapsed, console)


def _tail(console: bytes, lines: int = 20) -> str:
    text = console.decode("utf-8", "replace").replace("\r", "").rstrip("\n").split("\n")
    return "last console lines:\n" + "\n".join(f"  | {line}" for line in text[-lines:])


def write_junit(path: str, name: str, outcome: Outcome) -> None:
    from xml.sax.saxutils import escape, quoteattr

    def clean(text: str) -> str:
        # XML 1.0 forbids most control characters; consoles print them.
        return "".join(c if c in "\t\n" or ord(c) >= 0x20 else "?" for c in text)

    failures = 1 if outcome.result == FAIL else 0
    skipped = 1 if outcome.result == SKIP else 0
    t = f"{outcome.elapsed:.3f}"
    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="kvmm-boot-test" tests="1" failures="{failures}" errors="0" '
             f'skipped="{skipped}" time="{t}">',
             f'  <testcase classname="kvmm.boot-test" name={quoteattr(name)} time="{t}">']
    if outcome.result == FAIL:
        parts.append(f"    <failure message={quoteattr(clean(outcome.reason))}>"
                     f"{escape(clean(outcome.detail))}</failure>")
    elif outcome.result == SKIP:
        parts.append(f"    <skipped message={quoteattr(clean(outcome.reason))}/>")
    if outcome.boot_time is not None:
        parts.append(f'    <properties><property name="boot_time_s" '
                     f'value="{outcome.boot_time:.3f}"/></properties>')
    console = outcome.console[-JUNIT_CONSOLE_TAIL:].decode("utf-8", "replace")
    parts.append(f"    <system-out>{escape(clean(console))}</system-out>")
    parts += ["  </testcase>", "</testsuite>", ""]
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)


def report(outcome: Outcome, quiet: bool = False) -> None:
    print(f"kvmm boot-test: {outcome.result}: {outcome.reason}", file=sys.stderr)
    if outcome.boot_time is not None:
        print(f"kvmm boot-test: boot time {outcome.boot_time:.3f} s (monitor start to the "
              "success pattern)", file=sys.stderr)
    if outcome.detail and (outcome.result == FAIL or not quiet):
        for line in outcome.detail.splitlines():
            print(f"kvmm: {line}", file=sys.stderr)
