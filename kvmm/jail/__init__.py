"""`kvmm jail`: Firecracker's jailer for kvmm's monitor (docs/jail.md).

spec.py   the flags, checked once (JailSpec, JailError)
cgroup.py the jail's cgroup, v1 and v2
root.py   the jail's root: the guest's files, the interpreter's read-only binds, /dev, /proc
linux.py  the system calls Python's os lacks (ctypes)
jailer.py the sequence, ending in exec of the monitor

Also here, for the monitor itself (not the jailer):
seccomp.py  per-thread seccomp filters (docs/seal.md)
syscalls.py their allowlists, one reason per entry

Nothing is imported here: the monitor's boot path imports seccomp.py alone.
"""