"""A stack of clean-up callbacks, run last-in first-out (contextlib.ExitStack's
`callback`/`close`, without its import cost on the boot path)."""
from __future__ import annotations


class Cleanup:
    def __init__(self) -> None:
        self._callbacks: list = []

    def callback(self, fn, *args) -> None:
        self._callbacks.append((fn, args))

    def close(self) -> None:
        """Run every callback; the first error is raised after all have run."""
        error = None
        while self._callbacks:
            fn, args = self._callbacks.pop()
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
