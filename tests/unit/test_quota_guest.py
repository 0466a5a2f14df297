"""GuestQuota targets and PATCH semantics with kvmm.spec.RateLimiterSpec, how
requests price themselves (RequestAdmission), and the lifecycle's run-time
rate-limit changes (kvmm.vmm.Vmm.patch_rate_limiter / patch_drive /
patch_network_interface)."""
import pytest

from kvmm.quota.guest import GuestQuota, LimitError
from kvmm.quota.limits import RequestAdmission
from kvmm.spec import DriveSpec, NetworkInterfaceSpec, RateLimiterSpec, SpecError, VmSpec
from kvmm.virtio.blk.request import (
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, BlockRequest,
)
from kvmm.vmm import RUNNING, STOPPED, ActionError, Vmm


def limiter(obj) -> RateLimiterSpec:
    return RateLimiterSpec.from_json(obj, "rate_limiter")


def shorthand(**values) -> RateLimiterSpec:
    return RateLimiterSpec.from_shorthand(values, "test")


def test_devices_and_groups_are_targets():
    q = GuestQuota()
    q.drive("d0", shorthand(bw="1M"))
    q.nic("n0", "rx")
    assert set(q.limiters) == {"drives", "nets:rx", "nets:tx", "drive:d0", "net:n0:rx"}
    assert q.limiters["drive:d0"].parents == (q.limiters["drives"],)
    assert q.limiters["net:n0:rx"].parents == (q.limiters["nets:rx"],)
    assert q.limiters["drive:d0"].bandwidth.size == (1 << 20) // 10
    assert q.limiters["net:n0:rx"].bandwidth is None and q.limiters["net:n0:rx"].ops is None


def test_patch_semantics():
    q = GuestQuota()
    q.drive("d0", shorthand(bw="1M", iops="100"))
    lim = q.limiters["drive:d0"]
    ops = lim.ops
    q.patch("drive:d0", limiter({"bandwidth": {"size": 5000, "refill_time": 10}}))
    assert lim.bandwidth.size == 5000 and lim.ops is ops          # ops left out: unchanged
    q.patch("drive:d0", limiter({"ops": {"size": 0, "refill_time": 0}}))
    assert lim.ops is None and lim.bandwidth.size == 5000         # size 0: removed
    q.patch("drive:d0", limiter({"ops": {"size": 7, "refill_time": 100, "one_time_burst": 3}}))
    assert (lim.ops.size, lim.ops.refill_time_ms, lim.ops.one_time_burst) == (7, 100, 3)
    with pytest.raises(LimitError, match="no device or group 'drive:zz'"):
        q.patch("drive:zz", RateLimiterSpec())
    # A bad body is refused by the spec, before the quota sees it.
    with pytest.raises(SpecError, match="unknown field.*'bandwith'") as e:
        limiter({"bandwith": {}})
    assert e.value.field == "rate_limiter"
    with pytest.raises(SpecError, match="above 0 ms") as e:
        limiter({"bandwidth": {"size": 10, "refill_time": 0}})
    assert e.value.field == "rate_limiter.bandwidth.refill_time"


def test_group_limit_applies_to_every_device():
    q = GuestQuota()
    a = q.drive("a")
    b = q.drive("b")
    q.set_group("drives", shorthand(iops="10"))        # one op per 100 ms bucket
    assert a.admit_bytes(0) == 0
    assert b.admit_bytes(0) > 0          # the shared bucket is empty now
    with pytest.raises(LimitError, match="unknown group 'disks'"):
        q.set_group("disks", RateLimiterSpec())


def test_backoff_applies_to_every_limiter():
    q = GuestQuota(backoff_ns=50_000_000)
    adm = q.drive("d", shorthand(iops="10"))
    assert adm.admit_bytes(0) == 0
    assert adm.admit_bytes(0) >= 0.05


# Requests price themselves. -------------------------------------------------------------
def request(rtype, nbytes):
    return BlockRequest(0, rtype, 0, [], nbytes, memoryview(bytearray(1)))


@pytest.mark.parametrize("rtype,nbytes,cost", [
    (VIRTIO_BLK_T_IN, 4096, 4096), (VIRTIO_BLK_T_OUT, 512, 512),
    (VIRTIO_BLK_T_FLUSH, 0, 0), (VIRTIO_BLK_T_GET_ID, 20, 0), (VIRTIO_BLK_T_DISCARD, 16, 0),
])
def test_block_requests_price_themselves(rtype, nbytes, cost):
    assert request(rtype, nbytes).cost_bytes == cost
    q = GuestQuota()
    adm = q.drive("d")
    assert isinstance(adm, RequestAdmission) and not adm.limits()
    assert adm.admit(request(rtype, nbytes)) == 0.0
    stats = q.stats()
    assert (stats["drive:d"]["ops"], stats["drive:d"]["bytes"]) == (1, cost)
    assert (stats["drives"]["ops"], stats["drives"]["bytes"]) == (1, cost)


def test_admission_waits_for_the_bucket():
    q = GuestQuota()
    adm = q.drive("d", limiter({"bandwidth": {"size": 4096, "refill_time": 1000}}))
    assert adm.limits()
    assert adm.admit(request(VIRTIO_BLK_T_IN, 4096)) == 0.0
    wait = adm.admit(request(VIRTIO_BLK_T_IN, 2048))
    assert 0.4 < wait <= 0.5                             # half the bucket: half a second
    assert adm.admit(request(VIRTIO_BLK_T_FLUSH, 0)) == 0.0   # costs no bytes


# The lifecycle's run-time changes, on a stand-in machine. -------------------------------
class FakeMachine:
    def __init__(self):
        self.quota = GuestQuota()
        self.quota.drive("d0")
        self.quota.nic("eth0", "rx")
        self.quota.nic("eth0", "tx")
        self.virtio_devices = []
        self.mem = None
        self.cgroup = None
        self.threads = []
        self.stopped = None

    def stop(self, status, message):
        self.stopped = (status, message)


@pytest.fixture
def vmm():
    spec = VmSpec(drives=[DriveSpec(drive_id="d0", path_on_host="/nonexistent/d0.img")],
                  network_interfaces=[NetworkInterfaceSpec(iface_id="eth0",
                                                           host_dev_name="tap0")])
    v = Vmm(spec)
    v.machine = FakeMachine()
    v.state = RUNNING
    return v


def test_patch_rate_limiter_by_target(vmm):
    vmm.patch_rate_limiter("drive:d0", {"ops": {"size": 10, "refill_time": 100}})
    assert vmm.stats()["limits"]["drive:d0"]["ops_bucket"]["size"] == 10
    vmm.patch_rate_limiter("nets:tx", {"bandwidth": {"size": 1000, "refill_time": 100}})
    assert vmm.machine.quota.limiters["nets:tx"].bandwidth.size == 1000
    with pytest.raises(ActionError, match="no device or group 'drive:x'"):
        vmm.patch_rate_limiter("drive:x", {})
    with pytest.raises(SpecError) as e:
        vmm.patch_rate_limiter("drive:d0", {"ops": {"size": -1, "refill_time": 100}})
    assert e.value.field == "rate_limiter.ops.size"
    with pytest.raises(SpecError):
        vmm.patch_rate_limiter("drive:d0", [])


def test_patch_drive_rate_limiter_updates_the_configuration(vmm):
    vmm.patch_drive("d0", {"drive_id": "d0", "rate_limiter": {
        "bandwidth": {"size": 5000, "refill_time": 100}}})
    assert vmm.machine.quota.limiters["drive:d0"].bandwidth.size == 5000
    assert vmm.get_vm_config()["drives"][0]["rate_limiter"]["bandwidth"]["size"] == 5000
    vmm.patch_drive("d0", {"drive_id": "d0", "rate_limiter": {
        "ops": {"size": 3, "refill_time": 100}}})
    config = vmm.spec.drives[0].rate_limiter
    assert config.bandwidth.size == 5000 and config.ops.size == 3     # merged
    with pytest.raises(SpecError, match="unknown field.*is_read_only"):
        vmm.patch_drive("d0", {"drive_id": "d0", "is_read_only": True})
    with pytest.raises(SpecError) as e:
        vmm.patch_drive("d0", {"drive_id": "d0", "rate_limiter": {"ops": {"size": "x"}}})
    assert e.value.field == "drive.rate_limiter.ops.size"
    with pytest.raises(ActionError, match="no drive with id 'zz'"):
        vmm.patch_drive("zz", {"drive_id": "zz"})


def test_patch_network_interface_rate_limiters(vmm):
    vmm.patch_network_interface("eth0", {"iface_id": "eth0", "rx_rate_limiter": {
        "ops": {"size": 20, "refill_time": 100}}})
    assert vmm.machine.quota.limiters["net:eth0:rx"].ops.size == 20
    assert vmm.machine.quota.limiters["net:eth0:tx"].ops is None
    assert vmm.spec.network_interfaces[0].rx_rate_limiter.ops.size == 20
    with pytest.raises(SpecError, match="unknown field.*guest_mac"):
        vmm.patch_network_interface("eth0", {"iface_id": "eth0", "guest_mac": "02:00:00:00:00:01"})
    with pytest.raises(ActionError, match="no network interface with id 'eth9'"):
        vmm.patch_network_interface("eth9", {"iface_id": "eth9"})


def test_run_time_changes_need_a_running_guest():
    v = Vmm(VmSpec())
    with pytest.raises(ActionError, match="not running"):
        v.patch_rate_limiter("drives", {})
    v.machine = FakeMachine()
    v.state = STOPPED
    with pytest.raises(ActionError, match="not running"):
        v.patch_drive("d0", {"drive_id": "d0"})
