"""The launch sequences of the orchestrators that run Firecracker, replayed
against `kvmm firecracker` as they appear in their sources (each test names
the file it follows): the argv, the configuration they write, the order of
their API calls, how they wait, how they read logs and metrics, how they stop
the process. Plus the process facts they rely on: the `--version` line, the
process name `firecracker` and the vCPU thread names `fc_vcpu N`.

The guests are kvmm's guest kernel; the orchestrators' own kernel words
(console=, reboot=, 8250.nr_uarts=...) stay on the command line beside the
guest's mode, which ignores them.
"""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import threading
import time
import uuid

import pytest

from tests.integration.fc_client import (FIRECRACKER, VERSION_RE, Firecracker, call, image,
                                         short_dir, wait_for_api, wait_for_state)
from tests.integration.test_blk import pattern_sector
from tests.integration.test_net import net_ok, netns, ping, tap  # noqa: F401

pytestmark = pytest.mark.kvm


class FifoReader:
    """The read end of a named pipe, opened O_RDONLY|O_NONBLOCK (as Kata's
    fcListenToFifo does) before the writer exists; lines are collected by a
    thread until close()."""

    def __init__(self, path: str, create: bool = True):
        if create:
            os.mkfifo(path, 0o600)
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.data = b""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            chunk = os.read(self.fd, 65536) if ready else b""
            if chunk:
                self.data += chunk
            elif self._done.is_set():
                return
            elif ready:
                time.sleep(0.02)          # no writer at the moment: EOF until one opens

    def close(self) -> list[str]:
        self._done.set()
        self._thread.join(5)
        os.close(self.fd)
        return self.lines()

    def lines(self) -> list[str]:
        return self.data.decode(errors="replace").splitlines()


def json_lines(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def vcpu_indexes(names: list[str]) -> list[int]:
    """Kata's GetThreadIDs: threads whose comm starts with `fc_vcpu`, the rest
    of the name (spaces trimmed) an integer."""
    out = []
    for comm in names:
        if comm.startswith("fc_vcpu"):
            out.append(int(comm[len("fc_vcpu"):].strip()))
    return sorted(out)


# --version and names. -------------------------------------------------------------------
@pytest.mark.parametrize("argv0", ["module", "script"])
def test_version_line(argv0):
    """Kata's fc.go parseVersion: the first line, second word, "v" stripped, a
    semantic version >= fcMinSupportedVersion (0.21.1)."""
    if argv0 == "module":
        argv = FIRECRACKER
    else:
        argv = [os.path.join(os.path.dirname(FIRECRACKER[0]), "kvmm-firecracker")]
        assert os.access(argv[0], os.X_OK), f"{argv[0]} is missing: pip install -e . " \
                                            "(ci/setup) installs the console script"
    proc = subprocess.run(argv + ["--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc
    first = proc.stdout.splitlines()[0]
    assert re.match(VERSION_RE, first), proc.stdout
    version = tuple(int(x) for x in first.split(" ")[1].lstrip("v").split("."))
    assert version >= (0, 21, 1)


def test_process_and_vcpu_thread_names(guest_kernel):
    """`ps` shows `firecracker`; Kata's GetThreadIDs (fc.go) finds one
    `fc_vcpu N` thread per vCPU and parses N."""
    with short_dir() as d:
        disk = image(os.path.join(d, "d.img"), 1 << 20)
        config = os.path.join(d, "vm.json")
        with open(config, "w") as f:
            json.dump({"boot-source": {"kernel_image_path": guest_kernel,
                                       "boot_args": "mode=blkwrite sectors=8"},
                       "drives": [{"drive_id": "d", "path_on_host": disk,
                                   "is_root_device": False, "is_read_only": False}],
                       "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}, f)
        fc = Firecracker(["--api-sock", os.path.join(d, "s.sock"), "--config-file", config], d)
        try:
            fc.wait_for_console("FLUSHED")
            assert fc.comm() == "firecracker"
            names = fc.thread_names()
            assert vcpu_indexes(names) == [0, 1], names
            assert names.count("fc_vcpu 0") == 1 and names.count("fc_vcpu 1") == 1, names
            fc.signal(signal.SIGTERM)
            assert fc.wait() == 0, fc.transcript()
        finally:
            fc.kill()


# Kata Containers. -----------------------------------------------------------------------
KATA_POOL = 8                                    # fc.go fcDiskPoolSize


def test_kata_containers(guest_kernel, netns, net_ok):
    """kata-containers src/runtime/virtcontainers/fc.go: StartVM ->
    fcInitConfiguration (fcSetVMBaseConfig smt false, fcSetBootSource,
    fcSetVMRootfs: "rootfs" read-only and not a root device, createDiskPool:
    empty placeholder files drive_0..drive_7, fcSetLogger / fcSetMetrics:
    FIFOs opened O_RDONLY|O_NONBLOCK first, then the queued devices:
    fcAddNetDevice with rx/tx rate limiters that are empty objects when no
    rate is set, fcAddBlockDrive) -> json.MarshalIndent to the config file ->
    fcInit: `--version` checked, `firecracker --api-sock S --config-file F`,
    waitVMMRunning polls GET / every 10 ms until "Running" (fcTimeout 10 s);
    hotplugBlockDevice: PATCH /drives/drive_N {drive_id, path_on_host};
    fcEnd: SIGTERM, then wait up to fcStopSandboxTimeout (15 s).
    Kata also adds a hybrid vsock (fcAddVsock) for its agent, which kvmm does
    not offer yet: this configuration leaves it out."""
    proc = subprocess.run(FIRECRACKER + ["--version"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and re.match(VERSION_RE, proc.stdout.splitlines()[0]), proc

    ns = netns.new()
    tap(ns, "tap0_kata")
    with short_dir() as vm_path:
        rootfs = image(os.path.join(vm_path, "kata-containers.img"), 2 << 20, b"root" * 128)
        placeholders = []
        for i in range(KATA_POOL):
            path = os.path.join(vm_path, f"drive_{i}")
            open(path, "wb").close()                      # createJailedDrive: os.Create
            placeholders.append(path)
        container = image(os.path.join(vm_path, "container.img"), 2 << 20)
        hotplugged = image(os.path.join(vm_path, "hotplug.img"), 4 << 20, b"hot" * 100)
        logs = FifoReader(os.path.join(vm_path, "logs.fifo"))
        metrics = FifoReader(os.path.join(vm_path, "metrics.fifo"))
        # the container's block device is disk 9: rootfs, drive_0..7, then it
        kernel_params = "mode=blkwrite disk=9 seed=9 sectors=1024 console=ttyS0"
        config = {
            "boot-source": {"kernel_image_path": guest_kernel, "boot_args": kernel_params},
            "drives": (
                [{"drive_id": "rootfs", "is_read_only": True, "is_root_device": False,
                  "path_on_host": rootfs}]
                + [{"drive_id": f"drive_{i}", "is_read_only": False, "is_root_device": False,
                    "path_on_host": p} for i, p in enumerate(placeholders)]
                + [{"drive_id": "container0", "is_read_only": False,
                    "is_root_device": False, "path_on_host": container}]),
            "logger": {"level": "Debug", "log_path": logs.path},
            "machine-config": {"mem_size_mib": 128, "smt": False, "vcpu_count": 1},
            "metrics": {"metrics_path": metrics.path},
            "network-interfaces": [{"guest_mac": "02:42:ac:11:00:02", "host_dev_name":
                                    "tap0_kata", "iface_id": "eth0", "rx_rate_limiter": {},
                                    "tx_rate_limiter": {}}],
        }
        config_path = os.path.join(vm_path, "fcConfig.json")
        with open(config_path, "w") as f:
            f.write(json.dumps(config, indent="\t"))
        sock = os.path.join(vm_path, "firecracker.socket")
        fc = Firecracker(["--api-sock", sock, "--config-file", config_path], vm_path,
                         netns=ns)
        try:
            wait_for_api(sock, fc, 10.0)
            wait_for_state(sock, fc, "Running", 10.0, interval=0.01)
            os.kill(fc.pid, 0)                                  # Check(): kill(pid, 0)
            fc.wait_for_console("FLUSHED seed=9 sectors=1024")
            # hotplugBlockDevice(AddDevice): the placeholder now points at an image
            call(sock, "PATCH", "/drives/drive_0",
                 {"drive_id": "drive_0", "path_on_host": hotplugged}, expect=204)
            _, vm = call(sock, "GET", "/vm/config", expect=200)
            drive0 = next(d for d in vm["drives"] if d["drive_id"] == "drive_0")
            assert drive0["path_on_host"] == hotplugged, drive0
            held = open_files(fc.pid)
            assert hotplugged in held and placeholders[0] not in held, held
            fc.signal(signal.SIGTERM)                           # fcEnd
            assert fc.wait(15.0) == 0, fc.transcript()
        finally:
            fc.kill()
        log_lines, metric_lines = logs.close(), metrics.close()
        assert log_lines, "nothing came through the log FIFO"
        assert json_lines(metric_lines), "no metrics line came through the metrics FIFO"
        # the guest's flushed writes are in the container's image
        with open(container, "rb") as f:
            data = f.read(1024 * 512)
        for sector in range(1024):
            assert data[sector * 512:(sector + 1) * 512] == pattern_sector(9, sector), sector
        with open(rootfs, "rb") as f:
            assert f.read(512) == (b"root" * 128)              # read-only: untouched


# flintlock. ------------------------------------------------------------------------------
def test_flintlock(guest_kernel, netns, net_ok):
    """liquidmetal-dev/flintlock infrastructure/microvm/firecracker/: create.go
    (ensureState creates the log and metrics files as regular files; argv
    `--id UID --boot-timer --no-api --config-file firecracker.cfg --metadata
    metadata.json`; stdout/stderr to files, stdin empty; the pid file written
    by flintlock), config.go (WithMicroVM: smt true on amd64, the root volume
    with cache_type Unsafe, a tap interface, mmds-config V1 with the interfaces
    allowing metadata, DefaultKernelCmdLine plus the spec's words; WithState:
    logger Debug with show_level and show_log_origin, metrics), types.go (the
    JSON field names), provider.go (State: pid file and a live process;
    Delete: SIGHUP, then wait for the process; Metrics: the last line of the
    metrics file)."""
    ns = netns.new()
    tap(ns, "fltap0", "10.200.21.1/24")
    uid = "01HF9Z2C6Q8ZJ7X4VQ0ZJ5N8KD"                   # vm.ID.UID(): a ULID
    with short_dir() as state:
        root = image(os.path.join(state, "root.img"), 8 << 20)
        log_path = os.path.join(state, "firecracker.log")
        metrics_path = os.path.join(state, "firecracker.metrics")
        for path in (log_path, metrics_path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        cmdline = {"console": "ttyS0", "reboot": "k", "panic": "1", "pci": "off",
                   "i8042.noaux": "", "i8042.nomux": "", "i8042.nopnp": "",
                   "i8042.dumbkbd": "", "ds": "nocloud-net;s=http://169.254.169.254/latest/",
                   # the microVM spec's own kernel words
                   "mode": "netecho", "ip": "10.200.21.2/24", "seconds": "0"}
        boot_args = " ".join(k if v == "" else f"{k}={v}" for k, v in cmdline.items())
        config = {
            "drives": [{"drive_id": "root", "path_on_host": root, "is_root_device": True,
                        "is_read_only": False, "cache_type": "Unsafe"}],
            "boot-source": {"kernel_image_path": guest_kernel, "boot_args": boot_args},
            "logger": {"log_path": log_path, "level": "Debug", "show_level": True,
                       "show_log_origin": True},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": True,
                               "track_dirty_pages": False},
            "metrics": {"metrics_path": metrics_path},
            "mmds-config": {"version": "V1", "network_interfaces": ["eth0"]},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "fltap0",
                                    "guest_mac": "02:00:0a:c8:15:02"}],
        }
        config_path = os.path.join(state, "firecracker.cfg")
        with open(config_path, "w") as f:
            json.dump(config, f)
        metadata_path = os.path.join(state, "metadata.json")
        with open(metadata_path, "w") as f:
            json.dump({"latest": {"meta-data": "aW5zdGFuY2VfaWQ6IG12bTA=",
                                  "user-data": "I2Nsb3VkLWNvbmZpZwo="}}, f)
        fc = Firecracker(["--id", uid, "--boot-timer", "--no-api", "--config-file",
                          config_path, "--metadata", metadata_path], state, netns=ns)
        pid_path = os.path.join(state, "firecracker.pid")
        with open(pid_path, "w") as f:
            f.write(str(fc.pid))
        try:
            fc.wait_for_console("netecho ready")
            os.kill(int(open(pid_path).read()), 0)            # State(): running
            replies, out = ping(ns, "10.200.21.2", 3)
            assert replies == 3, out
            assert not any(n.endswith(".sock") for n in os.listdir(state)), "--no-api"
            fc.signal(signal.SIGHUP)                           # Delete()
            fc.wait(15.0)
        finally:
            fc.kill()
        with pytest.raises(ProcessLookupError):               # State(): pending
            os.kill(fc.pid, 0)
        with open(log_path) as f:
            log = f.read()
        assert f"[{uid}:" in log, log                         # the instance id in each line
        assert re.search(r":(INFO|DEBUG|WARN|ERROR):", log), log      # show_level
        assert "Guest-boot-time" in log, log                  # --boot-timer
        with open(metrics_path) as f:
            last = f.read().splitlines()[-1]                  # Metrics(): tail -1
        assert isinstance(json.loads(last), dict), last


# firecracker-go-sdk. ---------------------------------------------------------------------
def test_go_sdk(guest_kernel, netns, net_ok):
    """firecracker-microvm/firecracker-go-sdk machine.go / handlers.go:
    configureBuilder + seccompArgs (`--api-sock S --id VMID --no-seccomp`,
    VMID a random UUID), waitForSocket (the socket exists and GET
    /machine-config answers), the default FcInit handlers in order
    (CreateLogFiles: mkfifo; BootstrapLogging: PUT /logger {log_path, level,
    show_level true, show_log_origin false}, PUT /metrics; CreateMachine: PUT
    /machine-config then GET /machine-config; CreateBootSource; AttachDrives;
    CreateNetworkInterfaces with iface_id "1"; ConfigMmds: PUT /mmds/config,
    then SetMetadata: PUT /mmds), Start: PUT /actions InstanceStart;
    Shutdown: SendCtrlAltDel, then StopVMM: SIGTERM."""
    ns = netns.new()
    tap(ns, "sdktap0", "10.200.22.1/24")
    vm_id = str(uuid.uuid4())
    with short_dir() as d:
        sock = os.path.join(d, "firecracker.sock")
        disk = image(os.path.join(d, "rootfs.ext4"), 8 << 20)
        fc = Firecracker(["--api-sock", sock, "--id", vm_id, "--no-seccomp"], d, netns=ns)
        logs = metrics = None
        try:
            deadline = time.monotonic() + 3.0                 # Config.initTimeout
            while True:                                        # waitForSocket
                assert fc.proc.poll() is None, fc.transcript()
                if os.path.exists(sock):
                    try:
                        if call(sock, "GET", "/machine-config")[0] == 200:
                            break
                    except OSError:
                        pass
                assert time.monotonic() < deadline, f"no API within 3 s\n{fc.transcript()}"
                time.sleep(0.01)
            log_fifo, metrics_fifo = os.path.join(d, "log.fifo"), os.path.join(d, "metrics.fifo")
            os.mkfifo(log_fifo, 0o700)                        # createFifos
            os.mkfifo(metrics_fifo, 0o700)
            call(sock, "PUT", "/logger", {"log_path": log_fifo, "level": "Debug",
                                          "show_level": True, "show_log_origin": False},
                 expect=204)
            call(sock, "PUT", "/metrics", {"metrics_path": metrics_fifo}, expect=204)
            logs = FifoReader(log_fifo, create=False)         # FifoLogWriter capture
            metrics = FifoReader(metrics_fifo, create=False)
            machine = {"vcpu_count": 2, "mem_size_mib": 128, "smt": False}
            call(sock, "PUT", "/machine-config", machine, expect=204)
            _, got = call(sock, "GET", "/machine-config", expect=200)
            assert {k: got[k] for k in machine} == machine, got
            call(sock, "PUT", "/boot-source", {
                "kernel_image_path": guest_kernel,
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off mode=netecho "
                             "ip=10.200.22.2/24 seconds=0"}, expect=204)
            call(sock, "PUT", "/drives/1", {"drive_id": "1", "path_on_host": disk,
                                            "is_root_device": True, "is_read_only": False},
                 expect=204)
            call(sock, "PUT", "/network-interfaces/1",
                 {"iface_id": "1", "host_dev_name": "sdktap0",
                  "guest_mac": "06:00:0a:c8:16:02"}, expect=204)
            call(sock, "PUT", "/mmds/config", {"network_interfaces": ["1"], "version": "V2",
                                               "ipv4_address": "169.254.169.254"}, expect=204)
            metadata = {"latest": {"meta-data": {"instance-id": vm_id}}}
            call(sock, "PUT", "/mmds", metadata, expect=204)
            call(sock, "PUT", "/actions", {"action_type": "InstanceStart"}, expect=204)

            fc.wait_for_console("netecho ready")
            replies, out = ping(ns, "10.200.22.2", 3)
            assert replies == 3, out
            assert call(sock, "GET", "/mmds", expect=200)[1] == metadata
            _, info = call(sock, "GET", "/", expect=200)
            assert info["id"] == vm_id and info["state"] == "Running", info
            assert vcpu_indexes(fc.thread_names()) == [0, 1]
            call(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"}, expect=204)
            fc.signal(signal.SIGTERM)                          # StopVMM
            assert fc.wait(15.0) == 0, fc.transcript()
        finally:
            fc.kill()
            log_lines = logs.close() if logs else []
            metric_lines = metrics.close() if metrics else []
        assert any(":DEBUG]" in line or ":INFO]" in line for line in log_lines), log_lines
        assert json_lines(metric_lines), "no metrics line came through the metrics FIFO"


def open_files(pid: int) -> set[str]:
    """What the process's descriptors point at; one closed while they are read
    (the monitor opens and closes files of its own, e.g. /sys counters) is left out."""
    out = set()
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{n}"))
        except FileNotFoundError:
            pass
    return out
