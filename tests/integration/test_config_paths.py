"""One model behind every way in: `kvmm run --config-file` (Firecracker's JSON),
flags added to a file, `kvmm boot-test` honouring `run`'s options, and the
warning for a kernel the software-virtualization KVM would emulate."""
import json
import os

import pytest

from tests.integration.conftest import kvmm

pytestmark = pytest.mark.kvm

LANE_IMAGES = "/var/cache/kvmm-lane/images"


def disk(tmp_path, name="d.img", size=16 << 20) -> str:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return str(p)


def config(tmp_path, guest_kernel, **sections) -> str:
    obj = {"boot-source": {"kernel_image_path": guest_kernel, "boot_args": "mode=hello"},
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "drives": []}
    obj.update(sections)
    p = tmp_path / "vm.json"
    p.write_text(json.dumps(obj))
    return str(p)


def test_run_boots_a_firecracker_config_file(guest_kernel, tmp_path):
    img = disk(tmp_path)
    path = config(tmp_path, guest_kernel,
                  **{"boot-source": {"kernel_image_path": guest_kernel,
                                     "boot_args": "mode=smp iters=1000"},
                     "machine-config": {"vcpu_count": 2, "mem_size_mib": 96},
                     "drives": [{"drive_id": "data", "path_on_host": img,
                                 "is_root_device": False, "is_read_only": True}],
                     "kvmm": {"timeout": 30}})
    r = kvmm("run", "--config-file", path, check_status=0)
    v = r.verdict()
    assert (v["mode"], v["result"], v["cpus"]) == ("smp", "PASS", "2")


def test_flags_add_to_and_override_the_file(guest_kernel, tmp_path):
    img = disk(tmp_path)
    path = config(tmp_path, guest_kernel,
                  drives=[{"drive_id": "first", "path_on_host": img, "is_root_device": False}])
    second = disk(tmp_path, "second.img")
    r = kvmm("run", "--config-file", path, "--cmdline", "mode=blktest", "--drive",
             f"path={second},id=second,serial=SECOND", "--timeout", "60", check_status=0)
    v = r.verdict()
    assert (v["mode"], v["result"], v["disks"]) == ("blktest", "PASS", "2")
    assert v["serial0"] == "first" and v["serial1"] == "SECOND"


def test_a_root_drive_comes_first_with_root_on_the_command_line(guest_kernel, tmp_path):
    data, root = disk(tmp_path, "data.img"), disk(tmp_path, "root.img", 8 << 20)
    path = config(tmp_path, guest_kernel,
                  drives=[{"drive_id": "data", "path_on_host": data, "is_root_device": False},
                          {"drive_id": "rootfs", "path_on_host": root, "is_root_device": True,
                           "is_read_only": True}])
    r = kvmm("run", "--config-file", path, "--cmdline", "mode=blktest blocks=8",
             "--timeout", "60", check_status=0)
    v = r.verdict()
    # Disk 0 is the root drive (8 MiB, read-only), whatever the file's order.
    assert v["serial0"] == "rootfs" and int(v["sectors0"]) == (8 << 20) // 512
    assert v["checks0"].startswith("ro-refused") and v["serial1"] == "data"


def test_boot_test_honours_run_options(guest_kernel, tmp_path):
    """boot-test takes run's options and uses them: a rate limit on a drive it
    does not have is refused, and --stats-file and --api-sock work."""
    img = disk(tmp_path)
    bad = kvmm("boot-test", "--success", "RESULT", "--drive", f"path={img},id=d0",
               "--rate-limit", 'drive:nope={"ops": {"size": 1, "refill_time": 100}}')
    assert bad.status == 2 and "drive:nope" in bad.stderr, bad
    stats = tmp_path / "stats.json"
    ok = kvmm("boot-test", "--success", "RESULT blktest PASS", "--cmdline", "mode=blktest",
              "--drive", f"path={img},id=d0,iops=100000", "--stats-file", str(stats),
              "--timeout", "60", "--cpu-pin", "0")
    assert ok.status == 0, ok
    counters = json.loads(stats.read_text())
    assert counters["devices"]["virtio-blk:d0"]["writes"] > 0
    assert counters["limits"]["drive:d0"]["ops"] > 0
    assert counters["cpu"]["affinity"]["vcpu0"] == [0]


def test_a_kernel_that_would_be_emulated_is_named_before_boot(guest_kernel):
    """On the software-virtualization module a stock Linux kernel runs in the
    instruction emulator: one warning line before anything boots. On hardware
    KVM the same kernel runs normally and nothing is said."""
    bz = os.path.join(LANE_IMAGES, "bzImage")
    if not os.path.exists(bz):
        pytest.fail(f"{bz} is missing: run ci/lane/fetch (ci/setup does)")
    r = kvmm("run", "--kernel", bz, "--mem", "256M", "--cmdline", "console=ttyS0",
             "--console", "none", "--timeout", "1")
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    if os.path.exists("/sys/module/kvm_pvm"):
        assert len(warnings) == 1 and "instruction emulator" in warnings[0], r
        assert r.stderr.splitlines()[0] == warnings[0]          # before anything else
    else:
        assert not warnings, r
    quiet = kvmm("run", "--cmdline", "mode=hello", "--timeout", "20", check_status=0)
    assert "warning" not in quiet.stderr                         # kvmm's own kernel: native
