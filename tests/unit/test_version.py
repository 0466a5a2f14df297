"""kvmm's version, and the `--version` lines that Firecracker's users parse."""
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

from kvmm import version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")


def kata_firecracker_version(output: str) -> tuple[int, int, int]:
    """What Kata Containers' firecracker.go (parseVersion, checkVersion) gets
    from `firecracker --version`: the first line split on spaces, the second
    field trimmed and without its leading "v", parsed as a semantic version."""
    fields = output.split("\n")[0].split(" ")
    assert len(fields) > 1, "getting FC version failed, the output is malformed"
    text = fields[1].strip().removeprefix("v")
    m = SEMVER.fullmatch(text)
    assert m, f"Malformed firecracker version: {text!r}"
    return tuple(int(g) for g in m.groups()[:3])


def test_one_source_of_truth():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == \
        {"attr": "kvmm.version.__version__"}
    assert importlib.metadata.version("kvmm") == version.__version__


def test_versions_are_semantic():
    assert SEMVER.fullmatch(version.__version__)
    assert SEMVER.fullmatch(version.FIRECRACKER_VERSION)


def test_kvmm_version_lines():
    assert version.version_lines(False) == [f"kvmm {version.__version__}"]


def test_firecracker_version_lines_parse_as_kata_parses_them():
    lines = version.version_lines(True)
    assert lines[0] == f"Firecracker v{version.FIRECRACKER_VERSION}"
    assert lines[1].startswith(f"kvmm {version.__version__}")
    parsed = kata_firecracker_version("\n".join(lines) + "\n")
    assert parsed == tuple(int(x) for x in version.FIRECRACKER_VERSION.split("."))
    assert parsed >= (1, 7, 0)          # huge_pages in /machine-config


def test_importing_the_version_costs_nothing():
    code = "import sys, kvmm.version; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
