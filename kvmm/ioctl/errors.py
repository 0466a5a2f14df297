"""Errors raised by the KVM bindings."""
import errno
import os


class KvmError(OSError):
    """A KVM ioctl or /dev/kvm operation failed.

    `op` names the operation (e.g. "KVM_CREATE_VM"), `errno` is the kernel's
    error and `hint` (may be empty) says what to do about it.
    """

    def __init__(self, op: str, err: int, hint: str = ""):
        self.op = op
        self.hint = hint
        text = f"{op} failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
        if hint:
            text += f"; {hint}"
        super().__init__(err, text)

    def __str__(self) -> str:
        return self.strerror


class HostNotSupported(KvmError):
    """The host cannot run guests: no /dev/kvm, no permission, or a missing capability."""
