"""Errors of the kernel loaders."""


class BootError(Exception):
    """A kernel image, initrd or command line that cannot be booted.

    The message names the problem and what to do about it.
    """


class InvalidImage(BootError):
    """The kernel image is malformed or of an unsupported kind."""
