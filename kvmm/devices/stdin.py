"""Interactive console input: the host terminal's keystrokes go to the UART.

The terminal is put in raw mode for the guest's lifetime (restored on exit);
Ctrl-A then x stops the VM, as in QEMU's -nographic console.
"""
from __future__ import annotations

import os

ESCAPE = 0x01          # Ctrl-A
ESCAPE_QUIT = ord("x")


class StdinForwarder:
    def __init__(self, fd: int, serial, on_quit):
        self.fd = fd
        self.serial = serial
        self.on_quit = on_quit
        self._escape = False
        self._saved = None

    def raw_mode(self) -> None:
        import termios
        import tty
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        attrs = termios.tcgetattr(self.fd)
        attrs[1] |= termios.OPOST | termios.ONLCR    # keep "\n" -> "\r\n" on output
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def restore(self) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def on_readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return
        out = bytearray()
        for byte in data:
            if self._escape:
                self._escape = False
                if byte == ESCAPE_QUIT:
                    self.on_quit()
                    return
                if byte != ESCAPE:
                    out.append(ESCAPE)
                out.append(byte)
            elif byte == ESCAPE:
                self._escape = True
            else:
                out.append(byte)
        if out:
            self.serial.enqueue_input(bytes(out))
