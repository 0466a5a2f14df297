"""The seccomp allowlists against the traced runs (ci/trace/runs/*.json), and
the filters as libseccomp builds them (docs/seal.md)."""
import glob
import json
import os
from types import SimpleNamespace

import pytest

from kvmm.jail import seccomp, syscalls

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = sorted(glob.glob(os.path.join(REPO, "ci", "trace", "runs", "*.json")))
# What libseccomp itself does while loading a filter (recorded by traces made
# before the tracer waited for the real load): not calls of the sealed thread.
LOADING = {"seccomp", "prctl"}


def traced():
    """(run, role, syscall, {arg index: [values]}) of every traced call."""
    for path in RUNS:
        with open(path) as f:
            run = json.load(f)
        for role, calls in run["roles"].items():
            for name, entry in calls.items():
                if name not in LOADING:
                    yield os.path.basename(path), role, name, entry["args"]


def allowed(rule, args: dict) -> bool:
    """Whether every recorded value passes `rule`'s argument checks."""
    if rule.sets is None:
        return True
    for comparisons in rule.sets:
        assert len(comparisons) == 1, "the test checks one comparison per set"
    indexes = {c[0][0] for c in rule.sets}
    for index in indexes:
        for value in args.get(str(index), []):
            if not any(value & mask == want for ((i, op, mask, want),) in rule.sets
                       if i == index and op == syscalls.MASKED_EQ):
                return False
    return True


def test_there_are_traces():
    assert len(RUNS) >= 10, "run ci/trace/scenarios.py"


def test_every_traced_call_is_in_its_roles_list():
    outside = []
    for run, role, name, args in traced():
        rule = syscalls.allowlist(role).get(name)
        if rule is None or not allowed(rule, args):
            outside.append(f"{run}: {role} {name} {args}")
    assert not outside, "\n".join(outside)


def test_every_entry_is_used_or_says_why_not():
    """The role lists per role; COMMON (every role's) as one list."""
    used = {(role, name) for _, role, name, _ in traced()}
    used_by_any = {name for _, name in used}
    unused = [f"{role} {name}" for role in seccomp.ROLES
              for name, rule in syscalls.ROLES[role].items()
              if (role, name) not in used and not rule.untraced]
    unused += [f"common {name}" for name, rule in syscalls.COMMON.items()
               if name not in used_by_any and not rule.untraced]
    assert not unused, unused


def test_every_entry_says_why():
    for role in seccomp.ROLES:
        for name, rule in syscalls.allowlist(role).items():
            assert rule.why, (role, name)


def test_nothing_that_makes_a_process_or_executable_memory():
    for role in seccomp.ROLES:
        names = syscalls.allowlist(role)
        for banned in ("execve", "execveat", "ptrace", "socket", "connect", "bind",
                       "clone3", "memfd_create", "process_vm_writev", "mount"):
            assert banned not in names, (role, banned)
        assert names["mmap"].sets == [[(2, syscalls.MASKED_EQ, syscalls.PROT_EXEC, 0)]]


@pytest.mark.parametrize("role", seccomp.ROLES)
def test_libseccomp_builds_each_filter(role, tmp_path):
    pytest.importorskip("pyseccomp")
    f = seccomp.build(role)
    with open(tmp_path / "f.pfc", "w") as out:
        f.export_pfc(out)
    text = (tmp_path / "f.pfc").read_text()
    assert "ioctl" in text and "action TRAP" in text


def test_firecracker_seccomp_filter_is_refused():
    msg = seccomp.check_firecracker_flags(SimpleNamespace(no_seccomp=False,
                                                          seccomp_filter="/x.bpf"))
    assert "--seccomp-filter /x.bpf" in msg and "--no-seccomp" in msg
    assert seccomp.check_firecracker_flags(SimpleNamespace(no_seccomp=True,
                                                           seccomp_filter=None)) is None
    assert seccomp.mode() == seccomp.OFF


def test_unknown_mode_is_refused():
    with pytest.raises(seccomp.SeccompError):
        seccomp.configure("maybe")
