"""A stack of clean-up callbacks, run last-in first-out (contextlib.ExitStack's
`callback`/`close`, without its import cost on the boot path)."""
from __future__ import annotations


class Cleanup:
    """Callbacks registered with `callback` release resources the kernel would
    free at process exit anyway (fds, mappings); those registered with
    `essential` must run even then (a terminal mode, a cgroup to remove)."""

    def __init__(self) -> None:
        self._callbacks: list = []

    def callback(self, fn, *args) -> None:
        self._callbacks.append((fn, args, False))

    def essential(self, fn, *args) -> None:
        self._callbacks.append((fn, args, True))

    def close(self, essential_only: bool = False) -> None:
        """Run every callback (or only the essential ones, before a process exit);
        the first error is raised after all have run."""
        error = None
        while self._callbacks:
            fn, args, essential = self._callbacks.pop()
            if essential_only and not essential:
                continue
            try:
                fn(*args)
            except BaseException as e:  # keep unwinding, report the first failure
                if error is None:
                    error = e
        if error is not None:
            raise error

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
