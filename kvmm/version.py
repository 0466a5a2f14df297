"""kvmm's version (the one source: pyproject.toml reads it from here) and the
Firecracker API version that kvmm's Firecracker-compatible front end speaks."""
from __future__ import annotations

__version__ = "0.1.0"

# The Firecracker release whose API (src/firecracker/swagger/firecracker.yaml)
# kvmm follows: 1.7.0 is the first with `huge_pages` in /machine-config.
FIRECRACKER_VERSION = "1.7.0"


def version_lines(firecracker: bool) -> list[str]:
    """What `--version` prints, one string per line. As `firecracker`, the
    first line is Firecracker's own format, `Firecracker vX.Y.Z`: Kata
    Containers takes the second space-separated word of the first line and
    strips the "v" to get a semantic version."""
    if not firecracker:
        return [f"kvmm {__version__}"]
    return [f"Firecracker v{FIRECRACKER_VERSION}",
            f"kvmm {__version__} (Firecracker API {FIRECRACKER_VERSION})"]
