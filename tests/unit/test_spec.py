"""The typed specs (kvmm/spec/): each spec's JSON form with good and bad values,
errors that name the JSON path or the CLI word, the CLI forms sharing the same
checks, to_json round trips (property tests), a whole Firecracker configuration
file and the checks across specs, the command line with a root drive, device
order, rate-limit targets, and the shorthand rates."""
import copy
import json
import string

import pytest
from hypothesis import given, settings, strategies as st

from kvmm.cli.options import RUN_OPTIONS, parse_options
from kvmm.cli.run import spec_from_args
from kvmm.spec import (
    BootSourceSpec, DriveSpec, HostSpec, LoggerSpec, MachineSpec, MetricsSpec, MmdsConfigSpec,
    NetworkInterfaceSpec, RateLimiterSpec, SpecError, TokenBucketSpec, VmSpec, parse_amount,
)
from kvmm.spec.base import split_options
from kvmm.spec.ratelimit import SHORTHAND_REFILL_MS, U64_MAX
from kvmm.spec.vm import MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB

DRIVE = {"drive_id": "rootfs", "path_on_host": "/img/rootfs.ext4", "is_root_device": True}
NIC = {"iface_id": "eth0", "host_dev_name": "tap0"}
MACHINE = {"vcpu_count": 2, "mem_size_mib": 128}
BUCKET = {"size": 1000, "refill_time": 100}


def refused(build, field, match=None) -> SpecError:
    """`build()` raises a one-line SpecError naming `field`."""
    with pytest.raises(SpecError) as e:
        build()
    err = e.value
    assert err.field == field, (err.field, str(err))
    assert isinstance(err, ValueError) and "\n" not in str(err)
    assert str(err) == (f"{field}: {err.message}" if field else err.message)
    if match is not None:
        assert match in err.message, err.message
    return err


# SpecError. ---------------------------------------------------------------------------
def test_spec_error_carries_the_field():
    e = SpecError("drives[1].path_on_host", "is empty")
    assert (e.field, e.message, str(e)) == ("drives[1].path_on_host", "is empty",
                                            "drives[1].path_on_host: is empty")
    assert str(SpecError("", "must be a JSON object")) == "must be a JSON object"
    assert isinstance(e, ValueError)


# machine-config. ----------------------------------------------------------------------
def test_machine_defaults_and_values():
    m = MachineSpec.from_json(MACHINE, "machine-config")
    assert (m.vcpu_count, m.mem_size_mib, m.smt, m.track_dirty_pages, m.huge_pages,
            m.cpu_template) == (2, 128, False, False, "None", None)
    assert m.mem_size == 128 << 20
    full = {**MACHINE, "smt": False, "track_dirty_pages": True, "huge_pages": "2M",
            "cpu_template": "None"}
    m = MachineSpec.from_json(full, "machine-config")
    assert m.track_dirty_pages and m.huge_pages == "2M" and m.to_json() == full
    assert MachineSpec.from_json({"vcpu_count": MAX_VCPUS, "mem_size_mib": MIN_MEM_MIB})
    assert MachineSpec.from_json({"vcpu_count": 1, "mem_size_mib": MAX_MEM_MIB})
    assert MachineSpec() == MachineSpec(vcpu_count=1, mem_size_mib=64)


@pytest.mark.parametrize("patch,field,match", [
    ({"vcpu_count": 0}, "vcpu_count", "below the minimum 1"),
    ({"vcpu_count": MAX_VCPUS + 1}, "vcpu_count", "above the maximum"),
    ({"vcpu_count": -1}, "vcpu_count", "below the minimum"),
    ({"vcpu_count": "2"}, "vcpu_count", "must be a whole number, not a string"),
    ({"vcpu_count": 1.5}, "vcpu_count", "must be a whole number, not a number"),
    ({"vcpu_count": True}, "vcpu_count", "not a boolean"),
    ({"vcpu_count": None}, "vcpu_count", "not null"),
    ({"mem_size_mib": MIN_MEM_MIB - 1}, "mem_size_mib", "too small"),
    ({"mem_size_mib": MAX_MEM_MIB + 1}, "mem_size_mib", "more than kvmm maps"),
    ({"mem_size_mib": None}, "mem_size_mib", "not null"),
    ({"mem_size_mib": [64]}, "mem_size_mib", "not an array"),
    ({"smt": True, "vcpu_count": 3}, "smt", "must be 1 or even"),
    ({"smt": "no"}, "smt", "true or false"),
    ({"smt": None}, "smt", "not null"),
    ({"track_dirty_pages": 1}, "track_dirty_pages", "true or false"),
    ({"huge_pages": "1G"}, "huge_pages", "'1G' is not one of 'None', '2M'"),
    ({"cpu_template": "T2"}, "cpu_template", "not one of 'None'"),
])
def test_machine_refuses(patch, field, match):
    refused(lambda: MachineSpec.from_json({**MACHINE, **patch}, "machine-config"),
            f"machine-config.{field}", match)


@pytest.mark.parametrize("obj,field,match", [
    ({"vcpu_count": 1}, "machine-config.mem_size_mib", "is required"),
    ({"mem_size_mib": 64}, "machine-config.vcpu_count", "is required"),
    ({**MACHINE, "vcpus": 2}, "machine-config", "unknown field(s) 'vcpus'"),
    ([], "machine-config", "must be a JSON object, not an array"),
    (None, "machine-config", "not null"),
    ("2", "machine-config", "not a string"),
])
def test_machine_object_refused(obj, field, match):
    refused(lambda: MachineSpec.from_json(obj, "machine-config"), field, match)


# boot-source. -------------------------------------------------------------------------
def test_boot_source():
    b = BootSourceSpec.from_json({"kernel_image_path": "/k", "initrd_path": "/rd",
                                  "boot_args": "console=ttyS0"}, "boot-source")
    assert (b.kernel_image_path, b.initrd_path, b.boot_args) == ("/k", "/rd", "console=ttyS0")
    b = BootSourceSpec.from_json({"kernel_image_path": "/k", "initrd_path": None})
    assert b.initrd_path is None and b.boot_args is None


@pytest.mark.parametrize("obj,field,match", [
    ({}, "boot-source.kernel_image_path", "is required"),
    ({"kernel_image_path": None}, "boot-source.kernel_image_path", "not null"),
    ({"kernel_image_path": ""}, "boot-source.kernel_image_path", "is empty"),
    ({"kernel_image_path": 5}, "boot-source.kernel_image_path", "must be a string"),
    ({"kernel_image_path": "k\0"}, "boot-source.kernel_image_path", "NUL"),
    ({"kernel_image_path": "k", "boot_args": ["a"]}, "boot-source.boot_args", "not an array"),
    ({"kernel_image_path": "k", "initrd_path": 0}, "boot-source.initrd_path", "a string"),
    ({"kernel_image_path": "k", "kernel": "k"}, "boot-source", "unknown field(s) 'kernel'"),
])
def test_boot_source_refused(obj, field, match):
    refused(lambda: BootSourceSpec.from_json(obj, "boot-source"), field, match)


# drives. ------------------------------------------------------------------------------
def test_drive_defaults_and_values():
    d = DriveSpec.from_json(DRIVE, "drives[0]")
    assert (d.drive_id, d.path_on_host, d.is_root_device, d.is_read_only, d.partuuid,
            d.cache_type, d.io_engine, d.rate_limiter, d.serial) == (
        "rootfs", "/img/rootfs.ext4", True, False, None, "Unsafe", "Sync", None, None)
    assert d.kind == "virtio-blk" and d.id == "rootfs"
    assert d.label == "drive 'rootfs' (/img/rootfs.ext4)"
    d = DriveSpec.from_json({**DRIVE, "is_read_only": None, "rate_limiter": None,
                             "serial": None}, "drives[0]")
    assert d.is_read_only is False and d.rate_limiter is None
    full = {**DRIVE, "is_read_only": True, "partuuid": "0eaa91a0-01", "cache_type": "Writeback",
            "io_engine": "Sync", "serial": "SER 1",
            "rate_limiter": {"bandwidth": {**BUCKET, "one_time_burst": 5000},
                             "ops": {"size": 10, "refill_time": 1000}}}
    d = DriveSpec.from_json(full, "drives[0]")
    assert d.rate_limiter.bandwidth == TokenBucketSpec(size=1000, refill_time=100,
                                                       one_time_burst=5000)
    assert d.to_json() == {**full, "rate_limiter": {
        "bandwidth": {"size": 1000, "refill_time": 100, "one_time_burst": 5000},
        "ops": {"size": 10, "refill_time": 1000, "one_time_burst": 0}}}


@pytest.mark.parametrize("patch,field,match", [
    ({"is_root_device": "yes"}, "is_root_device", "true or false, not a string"),
    ({"is_root_device": None}, "is_root_device", "not null"),
    ({"is_read_only": "no"}, "is_read_only", "true or false"),
    ({"drive_id": 3}, "drive_id", "must be a string, not a number"),
    ({"drive_id": None}, "drive_id", "not null"),
    ({"drive_id": ""}, "drive_id", "must be 1-64"),
    ({"drive_id": "a/b"}, "drive_id", "must be 1-64"),
    ({"drive_id": "_x"}, "drive_id", "starting with a letter or digit"),
    ({"drive_id": "x" * 65}, "drive_id", "must be 1-64"),
    ({"path_on_host": ""}, "path_on_host", "is empty"),
    ({"path_on_host": None}, "path_on_host", "not null"),
    ({"partuuid": 7}, "partuuid", "a string"),
    ({"is_root_device": False, "partuuid": "0eaa91a0-01"}, "partuuid", "only for the root"),
    ({"cache_type": "None"}, "cache_type", "not one of 'Unsafe', 'Writeback'"),
    ({"cache_type": None}, "cache_type", "not null"),
    ({"io_engine": "Async"}, "io_engine", "'Async' is not one of 'Sync'"),
    ({"serial": "s" * 21}, "serial", "at most 20"),
    ({"serial": ""}, "serial", "printable ASCII"),
    ({"serial": "caf\u00e9"}, "serial", "printable ASCII"),
    ({"rate_limiter": []}, "rate_limiter", "must be a JSON object, not an array"),
    ({"rate_limiter": {"bandwith": {}}}, "rate_limiter", "unknown field(s) 'bandwith'"),
    ({"rate_limiter": {"bandwidth": {"size": -1, "refill_time": 100}}},
     "rate_limiter.bandwidth.size", "below the minimum 0"),
    ({"rate_limiter": {"ops": {"size": U64_MAX + 1, "refill_time": 100}}},
     "rate_limiter.ops.size", "above the maximum"),
    ({"rate_limiter": {"ops": {"size": 10}}}, "rate_limiter.ops.refill_time", "is required"),
    ({"rate_limiter": {"ops": {"refill_time": 10}}}, "rate_limiter.ops.size", "is required"),
    ({"rate_limiter": {"ops": {"size": None, "refill_time": 10}}}, "rate_limiter.ops.size",
     "not null"),
    ({"rate_limiter": {"ops": {"size": 10, "refill_time": 0}}},
     "rate_limiter.ops.refill_time", "above 0 ms"),
    ({"rate_limiter": {"ops": {"size": 0, "refill_time": 0, "one_time_burst": 5}}},
     "rate_limiter.ops", "needs a non-zero size"),
    ({"rate_limiter": {"ops": {**BUCKET, "one_time_burst": -1}}},
     "rate_limiter.ops.one_time_burst", "below the minimum 0"),
    ({"rate_limiter": {"ops": {**BUCKET, "rate": 1}}}, "rate_limiter.ops",
     "unknown field(s) 'rate'"),
])
def test_drive_refuses(patch, field, match):
    refused(lambda: DriveSpec.from_json({**DRIVE, **patch}, "drives[0]"),
            f"drives[0].{field}", match)


@pytest.mark.parametrize("missing", ["drive_id", "path_on_host", "is_root_device"])
def test_drive_required_fields(missing):
    obj = {k: v for k, v in DRIVE.items() if k != missing}
    refused(lambda: DriveSpec.from_json(obj, "drives[2]"), f"drives[2].{missing}", "is required")


def test_drive_unknown_field_and_not_an_object():
    refused(lambda: DriveSpec.from_json({**DRIVE, "readonly": True}, "drives[0]"),
            "drives[0]", "unknown field(s) 'readonly'; known: drive_id, path_on_host")
    refused(lambda: DriveSpec.from_json("rootfs", "drives[0]"), "drives[0]",
            "must be a JSON object, not a string")


# network-interfaces. ------------------------------------------------------------------
def test_nic_defaults_and_values():
    n = NetworkInterfaceSpec.from_json(NIC, "network-interfaces[0]")
    assert (n.iface_id, n.host_dev_name, n.guest_mac, n.mac, n.rx_rate_limiter,
            n.tx_rate_limiter) == ("eth0", "tap0", None, None, None, None)
    assert n.kind == "virtio-net" and n.id == "eth0"
    assert n.label == "network interface 'eth0' (TAP tap0)"
    n = NetworkInterfaceSpec.from_json({**NIC, "guest_mac": "06:00:AC:10:00:02",
                                        "rx_rate_limiter": {"ops": BUCKET},
                                        "tx_rate_limiter": None}, "network-interfaces[0]")
    assert n.mac == bytes.fromhex("0600ac100002") and n.guest_mac == "06:00:AC:10:00:02"
    assert n.rx_rate_limiter.ops.size == 1000 and n.tx_rate_limiter is None


@pytest.mark.parametrize("patch,field,match", [
    ({"iface_id": 0}, "iface_id", "a string"),
    ({"iface_id": "eth 0"}, "iface_id", "must be 1-64"),
    ({"host_dev_name": ""}, "host_dev_name", "1 to 15 bytes"),
    ({"host_dev_name": "t" * 16}, "host_dev_name", "IFNAMSIZ"),
    ({"host_dev_name": "a/b"}, "host_dev_name", "may not contain"),
    ({"host_dev_name": ".."}, "host_dev_name", "may not contain"),
    ({"host_dev_name": None}, "host_dev_name", "not null"),
    ({"guest_mac": "06:00:ac:10:00"}, "guest_mac", "not six hex byte pairs"),
    ({"guest_mac": "01:00:5e:00:00:01"}, "guest_mac", "multicast"),
    ({"guest_mac": "00:00:00:00:00:00"}, "guest_mac", "all zeros"),
    ({"guest_mac": 6}, "guest_mac", "a string"),
    ({"rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 0}}},
     "rx_rate_limiter.bandwidth.refill_time", "above 0 ms"),
    ({"tx_rate_limiter": 5}, "tx_rate_limiter", "must be a JSON object, not a number"),
    ({"mtu": 9000}, "", "unknown field(s) 'mtu'"),
])
def test_nic_refuses(patch, field, match):
    where = "network-interfaces[1]"
    refused(lambda: NetworkInterfaceSpec.from_json({**NIC, **patch}, where),
            f"{where}.{field}" if field else where, match)


@pytest.mark.parametrize("missing", ["iface_id", "host_dev_name"])
def test_nic_required_fields(missing):
    obj = {k: v for k, v in NIC.items() if k != missing}
    refused(lambda: NetworkInterfaceSpec.from_json(obj, "network-interfaces[0]"),
            f"network-interfaces[0].{missing}", "is required")


# Rate limiters. -----------------------------------------------------------------------
def test_rate_limiter_json():
    r = RateLimiterSpec.from_json({"bandwidth": {**BUCKET, "one_time_burst": None}}, "rl")
    assert r.bandwidth == TokenBucketSpec(size=1000, refill_time=100, one_time_burst=0)
    assert r.ops is None and bool(r)
    assert not RateLimiterSpec.from_json({}, "rl")
    assert not RateLimiterSpec.from_json({"bandwidth": {"size": 0, "refill_time": 0}}, "rl")
    assert RateLimiterSpec.from_json({"bandwidth": None, "ops": None}, "rl") == RateLimiterSpec()
    big = RateLimiterSpec.from_json({"ops": {"size": U64_MAX, "refill_time": U64_MAX}}, "rl")
    assert big.ops.size == U64_MAX


def test_rate_limiter_buckets():
    r = RateLimiterSpec.from_json({"bandwidth": {**BUCKET, "one_time_burst": 7},
                                   "ops": {"size": 0, "refill_time": 0}}, "rl")
    bandwidth, ops = r.buckets()
    assert (bandwidth.size, bandwidth.refill_time_ms, bandwidth.one_time_burst) == (1000, 100, 7)
    assert ops is None                              # size 0: no limit
    patch = r.patch_buckets()
    assert set(patch) == {"bandwidth", "ops"} and patch["ops"] is None
    assert RateLimiterSpec.from_json({"ops": BUCKET}, "rl").patch_buckets().keys() == {"ops"}
    merged = RateLimiterSpec.from_json({"ops": BUCKET}, "rl").merged(
        RateLimiterSpec.from_json({"bandwidth": {"size": 5, "refill_time": 1}}, "rl"))
    assert merged.ops.size == 1000 and merged.bandwidth.size == 5


# Logger, metrics, mmds-config, the kvmm section. -------------------------------------
def test_logger_metrics_mmds():
    log = LoggerSpec.from_json({"log_path": "/tmp/log", "level": "warning",
                                "show_level": True}, "logger")
    assert (log.level, log.show_level, log.show_log_origin) == ("Warning", True, False)
    assert LoggerSpec.from_json({}, "logger").level == "Info"
    assert MetricsSpec.from_json({"metrics_path": "/m"}, "metrics").metrics_path == "/m"
    mmds = MmdsConfigSpec.from_json({"network_interfaces": ["eth0"]}, "mmds-config")
    assert (mmds.version, mmds.network_interfaces, mmds.ipv4_address) == (
        "V1", ("eth0",), "169.254.169.254")


@pytest.mark.parametrize("cls,where,obj,field,match", [
    (LoggerSpec, "logger", {"level": "loud"}, "logger.level", "not one of Off, Error"),
    (LoggerSpec, "logger", {"show_level": "yes"}, "logger.show_level", "true or false"),
    (LoggerSpec, "logger", {"path": "/l"}, "logger", "unknown field(s) 'path'"),
    (MetricsSpec, "metrics", {}, "metrics.metrics_path", "is required"),
    (MetricsSpec, "metrics", {"metrics_path": None}, "metrics.metrics_path", "not null"),
    (MmdsConfigSpec, "mmds-config", {}, "mmds-config.network_interfaces", "is required"),
    (MmdsConfigSpec, "mmds-config", {"network_interfaces": "eth0"},
     "mmds-config.network_interfaces", "must be an array, not a string"),
    (MmdsConfigSpec, "mmds-config", {"network_interfaces": [1]},
     "mmds-config.network_interfaces[0]", "must be a string"),
    (MmdsConfigSpec, "mmds-config", {"network_interfaces": [], "version": "V3"},
     "mmds-config.version", "not one of 'V1', 'V2'"),
    (HostSpec, "kvmm", {"console": ""}, "kvmm.console", "is empty"),
    (HostSpec, "kvmm", {"timeout": 0}, "kvmm.timeout", "below the minimum"),
    (HostSpec, "kvmm", {"timeout": "5"}, "kvmm.timeout", "must be a number"),
    (HostSpec, "kvmm", {"mem_backing": "huge"}, "kvmm.mem_backing", "not one of 'normal'"),
    (HostSpec, "kvmm", {"hide_cpuid": ["avx"]}, "kvmm.hide_cpuid[0]", "'avx' is not one of"),
    (HostSpec, "kvmm", {"cpu_pin": [-1]}, "kvmm.cpu_pin[0]", "below the minimum 0"),
    (HostSpec, "kvmm", {"cpu_pin": [1 << 20]}, "kvmm.cpu_pin", "not available to kvmm"),
    (HostSpec, "kvmm", {"cpu_quota": 0}, "kvmm.cpu_quota", "below the minimum"),
    (HostSpec, "kvmm", {"throttle_backoff_ms": 60_001}, "kvmm.throttle_backoff_ms",
     "above the maximum 60000"),
    (HostSpec, "kvmm", {"drive_group": {"ops": {"size": 1}}},
     "kvmm.drive_group.ops.refill_time", "is required"),
    (HostSpec, "kvmm", {"console_file": "x"}, "kvmm", "unknown field(s) 'console_file'"),
])
def test_other_specs_refuse(cls, where, obj, field, match):
    refused(lambda: cls.from_json(obj, where), field, match)


def test_host_defaults():
    h = HostSpec.from_json({}, "kvmm")
    assert h == HostSpec() and h.console == "stdout" and h.mem_backing == "normal"
    assert h.hide_cpuid == () and h.throttle_backoff_ms == 0
    h = HostSpec.from_json({"hide_cpuid": ["xsave", "x2apic"], "timeout": 5,
                            "drive_group": {"ops": BUCKET}}, "kvmm")
    assert h.hide_cpuid == ("xsave", "x2apic") and h.timeout == 5.0
    assert h.drive_group.ops.size == 1000


# The CLI forms: the same checks, named the way the user wrote them. --------------------
@pytest.mark.parametrize("json_patch,json_field,cli,cli_field,match", [
    ({"drive_id": "-x"}, "drive_id", "path=a,id=-x", "id", "must be 1-64"),
    ({"path_on_host": ""}, "path_on_host", "path=", "path", "is empty"),
    ({"serial": "s" * 21}, "serial", "path=a,serial=" + "s" * 21, "serial", "at most 20"),
    ({"serial": "\u00e9"}, "serial", "path=a,serial=\u00e9", "serial", "printable ASCII"),
])
def test_drive_cli_and_json_share_checks(json_patch, json_field, cli, cli_field, match):
    a = refused(lambda: DriveSpec.from_json({**DRIVE, **json_patch}, "drives[0]"),
                f"drives[0].{json_field}", match)
    b = refused(lambda: DriveSpec.from_cli_option(cli, 0), f"--drive {cli!r}: {cli_field}",
                match)
    assert a.message == b.message


@pytest.mark.parametrize("json_patch,json_field,cli,cli_field,match", [
    ({"iface_id": "a b"}, "iface_id", "tap=t,id=a b", "id", "must be 1-64"),
    ({"host_dev_name": "t" * 16}, "host_dev_name", "tap=" + "t" * 16, "tap", "IFNAMSIZ"),
    ({"host_dev_name": "a:b"}, "host_dev_name", "tap=a:b", "tap", "may not contain"),
    ({"guest_mac": "03:00:00:00:00:01"}, "guest_mac", "tap=t,mac=03:00:00:00:00:01", "mac",
     "multicast"),
    ({"guest_mac": "zz"}, "guest_mac", "tap=t,mac=zz", "mac", "not six hex byte pairs"),
])
def test_nic_cli_and_json_share_checks(json_patch, json_field, cli, cli_field, match):
    a = refused(lambda: NetworkInterfaceSpec.from_json({**NIC, **json_patch}, "nic"),
                f"nic.{json_field}", match)
    b = refused(lambda: NetworkInterfaceSpec.from_cli_options([cli]),
                f"--net {cli!r}: {cli_field}", match)
    assert a.message == b.message


def test_cli_forms_build_the_json_forms():
    assert DriveSpec.from_cli_option("path=/a,,b.img,ro,id=data,serial=S1,bw=10M,iops=100", 0) \
        == DriveSpec.from_json({"drive_id": "data", "path_on_host": "/a,b.img",
                                "is_root_device": False, "is_read_only": True,
                                "serial": "S1", "rate_limiter": {
                                    "bandwidth": {"size": 1 << 20, "refill_time": 100},
                                    "ops": {"size": 10, "refill_time": 100}}})
    [nic] = NetworkInterfaceSpec.from_cli_options(
        ["tap=tap0,mac=06:00:ac:10:00:02,id=eth0,rx_bw=1M,tx_iops=50,tx_iops_burst=100"])
    assert nic == NetworkInterfaceSpec.from_json({
        "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
        "rx_rate_limiter": {"bandwidth": {"size": (1 << 20) // 10, "refill_time": 100}},
        "tx_rate_limiter": {"ops": {"size": 5, "refill_time": 100, "one_time_burst": 100}}})


@pytest.mark.parametrize("text,field,match", [
    ("path=a,bw=10M,bw=5M", "--drive 'path=a,bw=10M,bw=5M'", "bw is given twice"),
    ("path=a,bw=ten", "--drive 'path=a,bw=ten': bw", "'ten' is not a size"),
    ("path=a,bw_burst=1M", "--drive 'path=a,bw_burst=1M': bw", "needs a non-zero rate"),
    ("path=a,id", "--drive 'path=a,id': id", "needs a value"),
    ("path=a,rx_bw=1M", "--drive 'path=a,rx_bw=1M'", "unknown option 'rx_bw'"),
])
def test_drive_cli_refuses(text, field, match):
    refused(lambda: DriveSpec.from_cli_option(text, 0), field, match)


def test_split_options_escapes_commas():
    assert split_options("a=1,b=x,,y,,,c") == ["a=1", "b=x,y,", "c"]
    assert split_options("") == [""]


def args(*argv):
    return parse_options(RUN_OPTIONS, ["--kernel", "/k", *argv])


@pytest.mark.parametrize("argv,field,match", [
    (["--vcpus", "0"], "--vcpus", "below the minimum 1"),
    (["--vcpus", str(MAX_VCPUS + 1)], "--vcpus", "above the maximum"),
    (["--mem", "1M"], "--mem", "too small"),
    (["--mem", "1500K"], "--mem", "whole MiB"),
    (["--mem", "lots"], "--mem", "not a size"),
    (["--console", ""], "--console", "is empty"),
    (["--mem-backing", "huge"], "--mem-backing", "not one of"),
    (["--hide-cpuid", "avx"], "--hide-cpuid[0]", "not one of"),
    (["--throttle-backoff-ms", "60001"], "--throttle-backoff-ms", "above the maximum"),
    (["--cpu-pin", "0", "--vcpus", "2"], "--cpu-pin", "one host CPU per vCPU"),
    (["--drive-group", "bw=1M,size=5"], "--drive-group 'bw=1M,size=5'", "'size=5' is not one"),
    (["--drive-group", "iops_burst=5"], "--drive-group 'iops_burst=5': iops",
     "needs a non-zero rate"),
    (["--net-group", "bw=1M"], "--net-group 'bw=1M'", "not one of rx_bw="),
    (["--drive", "path=a,id=x", "--drive", "path=b,id=x"], "drives", "'x' is used twice"),
    (["--net", "tap=t0", "--net", "tap=t0"], "network-interfaces", "TAP t0 is given"),
    (["--rate-limit", "drives"], "--rate-limit 'drives'", "write TARGET=JSON"),
    (["--rate-limit", "drives={"], "--rate-limit drives", "not JSON"),
    (["--rate-limit", "drives={}", "--rate-limit", "drives={}"], "--rate-limit drives",
     "given twice"),
    (["--rate-limit", "drive:x={}"], "--rate-limit drive:x", "this guest has no 'drive:x'"),
])
def test_command_line_refuses_with_the_flags_name(argv, field, match):
    refused(lambda: spec_from_args(args(*argv)), field, match)


def test_command_line_and_config_file(tmp_path):
    config = {"boot-source": {"kernel_image_path": "/from-file", "boot_args": "quiet"},
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 128},
              "drives": [DRIVE], "kvmm": {"console": "none"}}
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(config))
    spec = spec_from_args(parse_options(RUN_OPTIONS, [
        "--config-file", str(path), "--mem", "256M", "--drive", "path=/data.img",
        "--net", "tap=tap0", "--drive-group", "iops=1000",
        "--rate-limit", 'net:net0:tx={"ops": {"size": 5, "refill_time": 100}}']))
    assert (spec.machine.vcpu_count, spec.machine.mem_size_mib) == (2, 256)   # flags add
    assert spec.boot_source.kernel_image_path == "/from-file"
    assert [d.drive_id for d in spec.drives] == ["rootfs", "drive1"]
    assert spec.host.console == "none" and spec.host.drive_group.ops.size == 100
    assert spec.network_interfaces[0].tx_rate_limiter.ops.size == 5
    assert spec.boot_args() == "root=/dev/vda rw quiet"


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": "/k"},
                                "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}))
    refused(lambda: VmSpec.from_file(str(path)),
            f"--config-file {path}: machine-config.vcpu_count", "below the minimum 1")
    path.write_text("{")
    refused(lambda: VmSpec.from_file(str(path)), f"--config-file {path}", "not valid JSON")
    refused(lambda: VmSpec.from_file(str(tmp_path / "nope.json")),
            f"--config-file {tmp_path / 'nope.json'}", "cannot read it")


# to_json round trips. -----------------------------------------------------------------
ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               min_size=1, max_size=40)
U64 = st.integers(0, U64_MAX)


@st.composite
def bucket_json(draw):
    size = draw(st.one_of(st.just(0), st.integers(1, U64_MAX)))
    if size == 0:
        return {"size": 0, "refill_time": draw(U64)}
    obj = {"size": size, "refill_time": draw(st.integers(1, U64_MAX))}
    burst = draw(st.one_of(st.none(), U64, st.just("absent")))
    if burst != "absent":
        obj["one_time_burst"] = burst
    return obj


LIMITER = st.fixed_dictionaries({}, optional={"bandwidth": st.one_of(st.none(), bucket_json()),
                                              "ops": st.one_of(st.none(), bucket_json())})


@st.composite
def drive_json(draw):
    root = draw(st.booleans())
    optional = {"is_read_only": st.one_of(st.none(), st.booleans()),
                "cache_type": st.sampled_from(["Unsafe", "Writeback"]),
                "io_engine": st.just("Sync"),
                "rate_limiter": st.one_of(st.none(), LIMITER),
                "serial": st.one_of(st.none(), st.text(st.characters(min_codepoint=32,
                                                                     max_codepoint=126),
                                                       min_size=1, max_size=20))}
    if root:
        optional["partuuid"] = st.one_of(st.none(), TEXT)
    return draw(st.fixed_dictionaries({"drive_id": ID, "path_on_host": TEXT,
                                       "is_root_device": st.just(root)}, optional=optional))


@st.composite
def mac_text(draw):
    raw = bytearray(draw(st.binary(min_size=6, max_size=6)))
    raw[0] &= 0xFE
    if raw == bytes(6):
        raw[5] = 1
    text = ":".join(f"{b:02x}" for b in raw)
    return text.upper() if draw(st.booleans()) else text


TAP = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=15).filter(
    lambda s: s not in (".", ".."))
NIC_JSON = st.fixed_dictionaries(
    {"iface_id": ID, "host_dev_name": TAP},
    optional={"guest_mac": st.one_of(st.none(), mac_text()),
              "rx_rate_limiter": st.one_of(st.none(), LIMITER),
              "tx_rate_limiter": st.one_of(st.none(), LIMITER)})
MACHINE_JSON = st.fixed_dictionaries(
    {"vcpu_count": st.integers(1, MAX_VCPUS),
     "mem_size_mib": st.integers(MIN_MEM_MIB, MAX_MEM_MIB)},
    optional={"smt": st.just(False), "track_dirty_pages": st.booleans(),
              "huge_pages": st.sampled_from(["None", "2M"]),
              "cpu_template": st.one_of(st.none(), st.just("None"))})


def round_trips(cls, obj):
    spec = cls.from_json(copy.deepcopy(obj), "x")
    out = spec.to_json()
    assert json.loads(json.dumps(out)) == out           # plain JSON
    again = cls.from_json(out, "x")
    assert again == spec and again.to_json() == out
    for key, value in obj.items():                      # what was given is kept
        if value is not None and not isinstance(value, dict) and key != "one_time_burst":
            assert out[key] == (list(value) if isinstance(value, tuple) else value)
    return spec


@settings(max_examples=200)
@given(drive_json())
def test_drive_round_trip(obj):
    round_trips(DriveSpec, obj)


@settings(max_examples=200)
@given(NIC_JSON)
def test_nic_round_trip(obj):
    spec = round_trips(NetworkInterfaceSpec, obj)
    if obj.get("guest_mac"):
        assert spec.mac == bytes.fromhex(obj["guest_mac"].replace(":", ""))


@settings(max_examples=200)
@given(MACHINE_JSON)
def test_machine_round_trip(obj):
    round_trips(MachineSpec, obj)


@settings(max_examples=200)
@given(LIMITER)
def test_rate_limiter_round_trip(obj):
    spec = round_trips(RateLimiterSpec, obj)
    for name in ("bandwidth", "ops"):
        given_bucket = obj.get(name)
        if given_bucket is not None:
            assert getattr(spec, name).one_time_burst == (given_bucket.get("one_time_burst")
                                                           or 0)


@settings(max_examples=100)
@given(ID, TEXT.filter(lambda p: p.strip() == p and "=" not in p), st.booleans())
def test_drive_cli_matches_json(drive_id, path, ro):
    text = f"path={path.replace(',', ',,')},id={drive_id}" + (",ro" if ro else "")
    assert DriveSpec.from_cli_option(text, 0) == DriveSpec.from_json(
        {"drive_id": drive_id, "path_on_host": path, "is_root_device": False,
         "is_read_only": ro})


# A whole configuration file. ---------------------------------------------------------
FULL = {
    "boot-source": {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0 reboot=k",
                    "initrd_path": None},
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False,
                       "track_dirty_pages": False},
    "drives": [
        {"drive_id": "data", "path_on_host": "/img/data.raw", "is_root_device": False,
         "is_read_only": True},
        {"drive_id": "rootfs", "path_on_host": "/img/rootfs.ext4", "is_root_device": True,
         "is_read_only": False, "rate_limiter": {
             "bandwidth": {"size": 52428800, "refill_time": 1000, "one_time_burst": 0},
             "ops": {"size": 1000, "refill_time": 1000}}},
    ],
    "network-interfaces": [
        {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"},
        {"iface_id": "eth1", "host_dev_name": "tap1"},
    ],
    "logger": {"log_path": "/tmp/fc.log", "level": "Debug", "show_level": True,
               "show_log_origin": False},
    "metrics": {"metrics_path": "/tmp/fc.metrics"},
    "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
    "balloon": None, "vsock": None,
}


def test_full_firecracker_config():
    spec = VmSpec.from_json(copy.deepcopy(FULL))
    assert (spec.machine.vcpu_count, spec.machine.mem_size_mib) == (2, 256)
    assert spec.boot_source.kernel_image_path == "/k/vmlinux"
    assert [d.drive_id for d in spec.drives] == ["data", "rootfs"]       # as given
    assert spec.drives[1].rate_limiter.bandwidth.size == 52428800
    assert spec.network_interfaces[0].mac == bytes.fromhex("0600ac100002")
    assert spec.logger.level == "Debug" and spec.metrics.metrics_path == "/tmp/fc.metrics"
    assert spec.mmds_config.network_interfaces == ("eth0",)
    assert spec.host == HostSpec()
    # the root drive first, then the other drives, then the NICs
    assert [d.id for d in spec.devices()] == ["rootfs", "data", "eth0", "eth1"]
    assert spec.boot_args() == "root=/dev/vda rw console=ttyS0 reboot=k"
    out = spec.to_json()
    assert {k for k, v in out.items() if v is None} == {"balloon", "cpu-config", "vsock",
                                                         "entropy"}
    assert VmSpec.from_json(out).to_json() == out
    assert out["drives"][1]["rate_limiter"]["ops"] == {"size": 1000, "refill_time": 1000,
                                                       "one_time_burst": 0}


def test_minimal_config_and_kvmm_section():
    spec = VmSpec.from_json({"boot-source": {"kernel_image_path": "/k"},
                             "kvmm": {"console": "none", "timeout": 10}})
    assert spec.machine == MachineSpec() and spec.drives == [] and spec.logger is None
    assert spec.host.console == "none" and spec.host.timeout == 10.0
    assert spec.devices() == [] and spec.boot_args() == ""


@pytest.mark.parametrize("section,what", [
    ("balloon", "a balloon device"), ("vsock", "a vsock device"),
    ("entropy", "an entropy device"), ("cpu-config", "custom CPU templates"),
])
def test_unsupported_sections(section, what):
    config = {**FULL, section: {"some": "thing"}}
    err = refused(lambda: VmSpec.from_json(config), section, f"kvmm does not offer {what}")
    assert f'remove the "{section}" section' in err.message


def with_(**changes):
    config = copy.deepcopy(FULL)
    config.update(changes)
    return config


def drive(drive_id, root=False, **kw):
    return {"drive_id": drive_id, "path_on_host": f"/img/{drive_id}", "is_root_device": root,
            **kw}


def nic(iface_id, tap, mac=None):
    return {"iface_id": iface_id, "host_dev_name": tap, "guest_mac": mac}


@pytest.mark.parametrize("config,field,match", [
    (with_(drives=[drive("a"), drive("a")]), "drives", "drive id 'a' is used twice"),
    (with_(drives=[drive("a", True), drive("b", True)]), "drives",
     "drives 'a' and 'b' are both root devices"),
    (with_(**{"network-interfaces": [nic("a", "tap0"), nic("b", "tap0")]}),
     "network-interfaces", "TAP tap0 is given to interfaces 'a' and 'b'"),
    (with_(**{"network-interfaces": [nic("a", "t0", "06:00:00:00:00:01"),
                                     nic("b", "t1", "06:00:00:00:00:01")]}),
     "network-interfaces", "MAC 06:00:00:00:00:01 is given to interfaces 'a' and 'b'"),
    (with_(**{"network-interfaces": [nic("a", "t0"), nic("a", "t1")]}),
     "network-interfaces", "interface id 'a' is used twice"),
    (with_(**{"mmds-config": {"network_interfaces": ["eth9"]}}),
     "mmds-config.network_interfaces", "no network interface 'eth9'"),
    (with_(drives=[drive("a"), {"drive_id": "b"}]), "drives[1].path_on_host", "is required"),
    (with_(drives=[drive("a", is_root_device=None)]), "drives[0].is_root_device", "not null"),
    (with_(drives={"a": drive("a")}), "drives", "must be an array"),
    (with_(**{"machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}),
     "machine-config.vcpu_count", "below the minimum 1"),
    (with_(**{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
              "kvmm": {"cpu_pin": [0, 0]}}), "kvmm.cpu_pin", "lists 2 CPUs for 1 vCPUs"),
    (with_(**{"network-interfaces": [{**nic("a", "t0"), "guest_mac": "1"}]}),
     "network-interfaces[0].guest_mac", "not six hex byte pairs"),
    (with_(**{"boot-source": None}), "boot-source", "is required"),
    ({"machine-config": MACHINE}, "boot-source", "is required"),
    (with_(drive=[]), "", "unknown field(s) 'drive'"),
    ([FULL], "", "must be a JSON object"),
])
def test_config_refused(config, field, match):
    refused(lambda: VmSpec.from_json(config), field, match)


def test_validate_booting_needs_a_boot_source():
    VmSpec().validate()
    refused(lambda: VmSpec().validate(booting=True), "boot-source", "no kernel is configured")


def test_huge_pages_and_hugetlb_backing_agree():
    spec = VmSpec(machine=MachineSpec(huge_pages="2M"))
    spec.validate()
    assert spec.host.mem_backing == "hugetlb"
    spec = VmSpec(host=HostSpec(mem_backing="hugetlb"))
    spec.validate()
    assert spec.machine.huge_pages == "2M"


# The command line with a root drive, and device order. ------------------------------
def vm(boot_args=None, drives=(), nics=()):
    return VmSpec(boot_source=BootSourceSpec(kernel_image_path="/k", boot_args=boot_args),
                  drives=[DriveSpec.from_json(d) for d in drives],
                  network_interfaces=[NetworkInterfaceSpec.from_json(n) for n in nics])


@pytest.mark.parametrize("boot_args,root,expected", [
    (None, None, ""),
    ("quiet", None, "quiet"),
    (None, {}, "root=/dev/vda rw"),
    ("quiet", {}, "root=/dev/vda rw quiet"),
    ("", {"is_read_only": True}, "root=/dev/vda ro"),
    ("quiet", {"partuuid": "0eaa91a0-01"}, "root=PARTUUID=0eaa91a0-01 rw quiet"),
    (None, {"partuuid": "0eaa91a0-01", "is_read_only": True}, "root=PARTUUID=0eaa91a0-01 ro"),
])
def test_boot_args(boot_args, root, expected):
    drives = [drive("data")] + ([drive("rootfs", True, **root)] if root is not None else [])
    assert vm(boot_args, drives).boot_args() == expected


def test_devices_root_drive_first():
    spec = vm(drives=[drive("a"), drive("b"), drive("root", True), drive("c")],
              nics=[nic("n1", "t1"), nic("n0", "t0")])
    assert [d.id for d in spec.devices()] == ["root", "a", "b", "c", "n1", "n0"]
    assert [d.kind for d in spec.devices()] == ["virtio-blk"] * 4 + ["virtio-net"] * 2
    spec = vm(drives=[drive("a"), drive("b")])
    assert [d.id for d in spec.devices()] == ["a", "b"]              # no root: as given


# Rate-limit targets. -----------------------------------------------------------------
LIMIT = RateLimiterSpec.from_shorthand({"iops": "100"}, "test")


@pytest.mark.parametrize("target,where", [
    ("drive:rootfs", lambda s: s.drives[1].rate_limiter),
    ("drive:data", lambda s: s.drives[0].rate_limiter),
    ("net:eth0:rx", lambda s: s.network_interfaces[0].rx_rate_limiter),
    ("net:eth1:tx", lambda s: s.network_interfaces[1].tx_rate_limiter),
    ("drives", lambda s: s.host.drive_group),
    ("nets:rx", lambda s: s.host.net_rx_group),
    ("nets:tx", lambda s: s.host.net_tx_group),
])
def test_set_rate_limiter(target, where):
    spec = VmSpec.from_json(copy.deepcopy(FULL))
    spec.set_rate_limiter(target, LIMIT, f"--rate-limit {target}")
    assert where(spec) is LIMIT
    groups = spec.group_limits()
    assert set(groups) == ({target} if target in ("drives", "nets:rx", "nets:tx") else set())


@pytest.mark.parametrize("target", ["drive:nope", "net:eth0:up", "net:eth9:rx", "net:eth0",
                                    "disks", "drive:", ""])
def test_set_rate_limiter_unknown_target(target):
    spec = VmSpec.from_json(copy.deepcopy(FULL))
    before = spec.to_json()
    err = refused(lambda: spec.set_rate_limiter(target, LIMIT, "--rate-limit X"),
                  "--rate-limit X", f"this guest has no {target!r}")
    assert ("targets: drive:data, drive:rootfs, drives, net:eth0:rx, net:eth0:tx, "
            "net:eth1:rx, net:eth1:tx, nets:rx, nets:tx") in err.message
    assert spec.to_json() == before and spec.group_limits() == {}


# Shorthand rates. --------------------------------------------------------------------
def test_shorthand_bandwidth_and_iops():
    r = RateLimiterSpec.from_shorthand({"bw": "10M"}, "test")
    assert r.bandwidth == TokenBucketSpec(size=1048576, refill_time=SHORTHAND_REFILL_MS)
    assert SHORTHAND_REFILL_MS == 100 and r.ops is None
    r = RateLimiterSpec.from_shorthand({"iops": "100"}, "test")
    assert r.ops == TokenBucketSpec(size=10, refill_time=100) and r.bandwidth is None
    r = RateLimiterSpec.from_shorthand({"bw": "1G", "bw_burst": "64M", "iops": "5000",
                                        "iops_burst": "100"}, "test")
    assert r.bandwidth == TokenBucketSpec(size=(1 << 30) // 10, refill_time=100,
                                          one_time_burst=64 << 20)
    assert r.ops == TokenBucketSpec(size=500, refill_time=100, one_time_burst=100)
    assert RateLimiterSpec.from_shorthand({}, "test") == RateLimiterSpec()
    assert RateLimiterSpec.from_shorthand({"bw": "0"}, "test") == RateLimiterSpec()
    r = RateLimiterSpec.from_shorthand({"rx_bw": "1M", "bw": "5M"}, "test", "rx_")
    assert r.bandwidth.size == (1 << 20) // 10 and r.ops is None


@pytest.mark.parametrize("values,field,match", [
    ({"bw_burst": "64M"}, "test: bw", "a one-time burst needs a non-zero rate"),
    ({"iops_burst": "10"}, "test: iops", "a one-time burst needs a non-zero rate"),
    ({"bw": "0", "bw_burst": "1"}, "test: bw", "needs a non-zero rate"),
    ({"bw": "fast"}, "test: bw", "'fast' is not a size"),
    ({"iops": "-5"}, "test: iops", "not a size"),
    ({"bw": "1M", "iops_burst": "1x"}, "test: iops_burst", "not a size"),
])
def test_shorthand_refused(values, field, match):
    refused(lambda: RateLimiterSpec.from_shorthand(values, "test"), field, match)


def test_group_options():
    [(key, spec)] = RateLimiterSpec.from_group_option("bw=10M,iops=100", "--drive-group").items()
    assert key == "" and spec.bandwidth.size == 1048576 and spec.ops.size == 10
    groups = RateLimiterSpec.from_group_option("rx_bw=10M,tx_iops=100", "--net-group",
                                               ("rx_", "tx_"))
    assert groups["rx_"].bandwidth.size == 1048576 and groups["rx_"].ops is None
    assert groups["tx_"].ops.size == 10 and groups["tx_"].bandwidth is None
    refused(lambda: RateLimiterSpec.from_group_option("bw", "--drive-group"),
            "--drive-group 'bw'", "'bw' is not one of bw=, bw_burst=, iops=, iops_burst=")


@pytest.mark.parametrize("text,unit,value", [
    ("1048576", "", 1 << 20), ("64M", "", 64 << 20), ("64m", "", 64 << 20),
    ("2MiB", "", 2 << 20), ("10MB", "", 10 << 20), ("512K", "", 512 << 10),
    ("1G", "", 1 << 30), ("1T", "", 1 << 40), ("64", "M", 64 << 20), ("0", "", 0),
])
def test_parse_amount(text, unit, value):
    assert parse_amount(text, "x", default_unit=unit) == value


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "1X", "1M5", "ten", "\u0661"])
def test_parse_amount_refused(text):
    refused(lambda: parse_amount(text, "--mem"), "--mem", "is not a size or amount")


# The OpenAPI document describes exactly the specs' fields ----------------------------
@pytest.mark.parametrize("schema,spec_cls", [
    ("BootSource", "BootSourceSpec"), ("Drive", "DriveSpec"),
    ("PartialDrive", "PartialDriveSpec"), ("NetworkInterface", "NetworkInterfaceSpec"),
    ("PartialNetworkInterface", "PartialNetworkInterfaceSpec"),
    ("MachineConfiguration", "MachineSpec"), ("Logger", "LoggerSpec"),
    ("Metrics", "MetricsSpec"), ("MmdsConfig", "MmdsConfigSpec"),
    ("RateLimiter", "RateLimiterSpec"), ("TokenBucket", "TokenBucketSpec")])
def test_openapi_schemas_name_the_spec_fields(schema, spec_cls):
    """kvmm/api/openapi.yaml and kvmm/spec/ list the same fields, and a field is
    required in one exactly where it is in the other."""
    import importlib.resources

    import yaml

    import kvmm.spec.devices
    doc = yaml.safe_load(importlib.resources.files("kvmm.api").joinpath("openapi.yaml")
                         .read_text())
    body = doc["components"]["schemas"][schema]
    cls = getattr(kvmm.spec.devices, spec_cls, None) or getattr(kvmm.spec, spec_cls)
    assert set(body["properties"]) == {f.name for f in cls.FIELDS}
    assert set(body.get("required", ())) == {f.name for f in cls.FIELDS if f.required}
