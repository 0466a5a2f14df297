"""`kvmm jail`: Firecracker's jailer for kvmm's monitor (docs/jail.md).

spec.py   the flags, checked once (JailSpec, JailError)
cgroup.py the jail's cgroup, v1 and v2
root.py   the jail's root: the guest's files, the interpreter's read-only binds, /dev, /proc
linux.py  the system calls Python's os lacks (ctypes)
jailer.py the sequence, ending in exec of the monitor
"""
from kvmm.jail.spec import JailError, JailFailure, JailSpec, jail_spec

__all__ = ["JailError", "JailFailure", "JailSpec", "jail_spec"]
