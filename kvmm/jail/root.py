"""The jail's root directory: what the monitor sees after pivot_root.

`<chroot_base>/<exec_file_name>/<id>/root` holds, on the host, only:
- the guest's files, put there by the orchestrator (hard links, copies or bind
  mounts), before or after the jailer runs, as with Firecracker's jailer;
- `<exec_file_name>`, a copy of the exec file (a console script of a few
  hundred bytes), and `<exec_file_name>.pid`;
- empty directories and symlinks where the interpreter's files appear.

Inside the jail's mount namespace (and only there) the interpreter runs from
read-only bind mounts of the host's own directories at their own paths: the
Python executable, the directories of the shared objects it maps, every
`sys.path` directory (standard library, lib-dynload, site-packages) and kvmm's
package. Nothing is copied per guest. `/dev` is a small tmpfs holding `kvm`
and `net/tun`, `/proc` a new proc (the monitor's pid namespace with
--new-pid-ns; otherwise with hidepid=invisible, so only the jail uid's own
processes are visible), `/run` an empty directory for the API socket.
"""
from __future__ import annotations

import os
import stat
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field

from kvmm.jail import linux
from kvmm.jail.spec import JailError, JailFailure, JailSpec

# Device numbers: Documentation/admin-guide/devices.txt (major 10, misc)
DEVICES = (("dev/kvm", 10, 232), ("dev/net/tun", 10, 200))
DEV_TMPFS = "mode=755,size=64k,nr_inodes=16"
JAILER_ENTRIES = ("dev", "run", "proc")   # a root holding one of these has been jailed
RO_BIND = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV

@dataclass
class Runtime:
    """What must be reachable inside the root for the exec file to run:
    symlinks to re-create and host paths to bind read-only at the same place."""
    links: list[tuple[str, str]] = field(default_factory=list)
    binds: list[str] = field(default_factory=list)


def shebang(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    return line.split()[0].decode() if line else None


def elf_interpreter(path: str) -> str | None:
    """PT_INTERP of an ELF64 little-endian executable (the dynamic loader)."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:          # ELFCLASS64
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:                                   # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def probe(exec_file: str, pythonpath: str = "") -> list[str]:
    """The host paths the exec file needs. A script must name this process's
    own interpreter (the jailer and the monitor are one kvmm installation, as
    Firecracker's jailer and firecracker are one release): its executable,
    every `sys.path` directory but the script's own and $PYTHONPATH's (the
    monitor's environment is empty), kvmm's package, the directory of each
    shared object this process maps (extension modules load more of them
    later) and each other file it maps (locale data). An ELF file needs its
    loader."""
    interpreter = shebang(exec_file)
    if interpreter is None:
        loader = elf_interpreter(exec_file)
        return [loader] if loader else []
    if os.path.realpath(interpreter) != os.path.realpath(sys.executable) or \
            os.path.dirname(os.path.dirname(os.path.abspath(interpreter))) != sys.prefix:
        raise JailError(f"--exec-file {exec_file}", f"its interpreter {interpreter} is not "
                        f"this kvmm's ({sys.executable}): run the `kvmm jail` of the "
                        "installation the exec file belongs to")
    import kvmm
    skip = set(pythonpath.split(os.pathsep)) if pythonpath else set()
    search = sys.path if sys.flags.safe_path else sys.path[1:]
    paths = [interpreter, sys.executable, os.path.dirname(os.path.abspath(kvmm.__file__)),
             *(p for p in search if p and p not in skip and os.path.isdir(p))]
    if sys.prefix != sys.base_prefix:
        paths.append(os.path.join(sys.prefix, "pyvenv.cfg"))
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                mapped = parts[5].rstrip("\n")
                paths.append(os.path.dirname(mapped) if ".so" in os.path.basename(mapped)
                             else mapped)
    loader = elf_interpreter(os.path.realpath(sys.executable))
    if loader:
        paths.append(loader)
    return [p for p in paths if os.path.lexists(p)]


def resolve(paths: list[str]) -> Runtime:
    """Each path to the symlinks met on the way and the real path at its end;
    real paths inside another one bound are dropped."""
    links: dict[str, str] = {}
    reals = set()
    for path in paths:
        reals.add(_walk(os.path.abspath(path), links))
    binds = []
    for real in sorted(reals):
        if not any(real == b or real.startswith(b.rstrip("/") + "/") for b in binds):
            binds.append(real)
    inside = lambda p: any(p.startswith(b.rstrip("/") + "/") for b in binds)  # noqa: E731
    return Runtime(links=sorted((p, t) for p, t in links.items() if not inside(p)),
                   binds=binds)


def _walk(path: str, links: dict[str, str], budget: int = 40) -> str:
    done = "/"
    rest = [p for p in path.split("/") if p]
    while rest:
        part = rest.pop(0)
        if part == "..":
            done = os.path.dirname(done)
            continue
        candidate = os.path.join(done, part)
        if os.path.islink(candidate):
            budget -= 1
            if budget < 0:
                raise JailFailure(f"too many symlinks resolving {path}")
            target = os.readlink(candidate)
            links[candidate] = target
            base = "/" if target.startswith("/") else done
            rest = [p for p in target.split("/") if p and p != "."] + rest
            done = base
            continue
        done = candidate
    return done


def _in_root(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def make_dirs(root: str, path: str, undo: ExitStack) -> None:
    """mkdir -p of `path` inside root (mode 0755, owned by root), each new
    directory removed again by `undo`."""
    current = root
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            continue
        undo.callback(remove, current)


def remove(path: str) -> None:
    """Undo one creation: rmdir or unlink, quietly (a directory someone else
    has put files into since stays)."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def bind_runtime(root: str, runtime: Runtime, undo: ExitStack) -> None:
    """In the jail's mount namespace: the runtime's paths bound read-only at
    their own paths inside the root, and its symlinks re-created."""
    for real in runtime.binds:
        target = _in_root(root, real)
        make_dirs(root, os.path.dirname(real), undo)
        if not os.path.lexists(target):
            if os.path.isdir(real):
                os.mkdir(target, 0o755)
                undo.callback(remove, target)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
                undo.callback(remove, target)
        linux.mount(real, target, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, target, None, RO_BIND)
    for path, link_target in runtime.links:
        inside = _in_root(root, path)
        if os.path.lexists(inside):
            continue
        make_dirs(root, os.path.dirname(path), undo)
        os.symlink(link_target, inside)
        undo.callback(remove, inside)


def guest_files(spec: JailSpec) -> list[tuple[str, str, bool]]:
    """(what, path inside the jail, writable) for each file the monitor's
    --config-file names, the configuration file first."""
    config = spec.config_file()
    if config is None:
        return []
    host = _in_root(spec.root, config)
    from kvmm.spec import SpecError, VmSpec
    try:
        vm = VmSpec.from_file(host)
    except SpecError as e:
        field = e.field.replace(f"--config-file {host}", "").lstrip(": ")
        raise JailError(f"--config-file {config}", f"{field}: {e.message}" if field
                        else f"{e.message} (looked for it in {spec.root})") from None
    except OSError as e:
        raise JailError(f"--config-file {config}", f"cannot read it in {spec.root} "
                                                   f"({e.strerror})") from None
    files = [("--config-file", config, False)]
    if vm.boot_source is not None:
        files.append(("boot-source.kernel_image_path", vm.boot_source.kernel_image_path, False))
        if vm.boot_source.initrd_path:
            files.append(("boot-source.initrd_path", vm.boot_source.initrd_path, False))
    for d in vm.drives:
        files.append((f"drives[{d.drive_id}].path_on_host", d.path_on_host,
                      not d.is_read_only))
    return files


def check_access(spec: JailSpec, files: list[tuple[str, str, bool]]) -> None:
    """Open each file as the jail's uid/gid, chrooted in the root, as the
    jailed monitor will (in a child process); JailError for the first it
    cannot open."""
    if not files:
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: never returns
        status = 1
        try:
            os.close(read_fd)
            os.chroot(spec.root)
            os.chdir("/")
            os.setgroups([])
            os.setresgid(spec.gid, spec.gid, spec.gid)
            os.setresuid(spec.uid, spec.uid, spec.uid)
            for i, (_, path, writable) in enumerate(files):
                try:
                    os.close(os.open(path, (os.O_RDWR if writable else os.O_RDONLY)
                                     | os.O_CLOEXEC))
                except OSError as e:
                    os.write(write_fd, f"{i}\0{e.strerror}".encode())
                    os._exit(1)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        answer = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        index, _, why = answer.partition("\0")
        if not index.isdigit():
            raise JailFailure(f"could not check the guest's files as uid {spec.uid}")
        what, path, writable = files[int(index)]
        raise JailError(f"{what} {path}", f"uid {spec.uid} gid {spec.gid} cannot "
                        f"{'read and write' if writable else 'read'} it inside the jail "
                        f"{spec.root} ({why})")


def protect(root: str, files: list[tuple[str, str, bool]]) -> None:
    """Bind each file the guest may not write onto itself, read-only (in the
    jail's mount namespace only)."""
    for _, path, writable in files:
        if not writable:
            target = _in_root(root, os.path.normpath("/" + path))
            linux.mount(target, target, None, linux.MS_BIND)
            linux.mount(None, target, None, RO_BIND)


def make_devices(root: str, uid: int, gid: int) -> None:
    """A tmpfs /dev holding kvm and net/tun owned by the jail's uid/gid (as
    Firecracker's jailer: mode 0600), then made read-only."""
    dev = os.path.join(root, "dev")
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, DEV_TMPFS)
    os.mkdir(os.path.join(dev, "net"), 0o755)
    for name, major, minor in DEVICES:
        path = os.path.join(root, name)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        os.chown(path, uid, gid)
    linux.mount(None, dev, None, linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
                | linux.MS_NOEXEC)


def mount_proc(target: str, own_pid_ns: bool) -> None:
    flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    linux.mount("proc", target, "proc", flags, None if own_pid_ns else "hidepid=invisible")
