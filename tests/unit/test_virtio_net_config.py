"""NIC options (kvmm.spec.NetworkInterfaceSpec's CLI form and VmSpec's checks
across NICs), MACs, TAP name checks, and the CLI's one-line errors for bad
--net input (exit status 2, nothing started)."""
import errno

import pytest

from kvmm import cli
from kvmm.spec import NetworkInterfaceSpec, SpecError, VmSpec
from kvmm.spec.devices import parse_mac as spec_parse_mac
from kvmm.virtio.net import format_mac, generate_mac, parse_mac
from kvmm.virtio.net import tap as tapmod


def nets(*texts):
    return NetworkInterfaceSpec.from_cli_options(list(texts))


def test_net_option_full():
    [c] = nets("tap=tap0,mac=02:AB:cd:00:00:01,id=lan")
    assert (c.host_dev_name, c.mac, c.iface_id) == ("tap0", bytes.fromhex("02abcd000001"), "lan")
    assert c.to_json() == {"iface_id": "lan", "host_dev_name": "tap0",
                           "guest_mac": "02:AB:cd:00:00:01", "rx_rate_limiter": None,
                           "tx_rate_limiter": None}


def test_net_option_minimal():
    [c] = nets("tap=kvmm-tap")
    assert (c.host_dev_name, c.mac, c.iface_id) == ("kvmm-tap", None, "net0")


@pytest.mark.parametrize("text, field, words", [
    ("", "--net", "empty"),
    ("mac=02:00:00:00:00:01", "--net 'mac=02:00:00:00:00:01'", "tap= is required"),
    ("tap=", "--net 'tap=': tap", "1 to 15 bytes"),
    ("tap=a,tap=b", "--net 'tap=a,tap=b'", "tap is given twice"),
    ("tap=a,speed=10", "--net 'tap=a,speed=10'", "unknown option 'speed'"),
    ("tap=a,ro", "--net 'tap=a,ro'", "unknown option 'ro'"),
    ("tap", "--net 'tap': tap", "needs a value"),
    ("tap=a,mac=02:00:00:00:00", "--net 'tap=a,mac=02:00:00:00:00': mac",
     "not six hex byte pairs"),
    ("tap=a,mac=02-00-00-00-00-01", "--net 'tap=a,mac=02-00-00-00-00-01': mac",
     "not six hex byte pairs"),
    ("tap=a,mac=02:00:00:00:00:0g", "--net 'tap=a,mac=02:00:00:00:00:0g': mac",
     "not six hex byte pairs"),
    ("tap=a,mac=02:00:00:00:00:001", "--net 'tap=a,mac=02:00:00:00:00:001': mac",
     "not six hex byte pairs"),
    ("tap=a,mac=01:00:5e:00:00:01", "--net 'tap=a,mac=01:00:5e:00:00:01': mac", "multicast"),
    ("tap=a,mac=ff:ff:ff:ff:ff:ff", "--net 'tap=a,mac=ff:ff:ff:ff:ff:ff': mac", "multicast"),
    ("tap=a,mac=00:00:00:00:00:00", "--net 'tap=a,mac=00:00:00:00:00:00': mac", "all zeros"),
    ("tap=a-name-that-is-too-long", "--net 'tap=a-name-that-is-too-long': tap",
     "1 to 15 bytes"),
    ("tap=abcdefghijklmnop", "--net 'tap=abcdefghijklmnop': tap", "1 to 15 bytes"),
    ("tap=a/b", "--net 'tap=a/b': tap", "may not contain"),
    ("tap=a:b", "--net 'tap=a:b': tap", "may not contain"),
    ("tap=a b", "--net 'tap=a b': tap", "may not contain"),
    ("tap=a,id=-x", "--net 'tap=a,id=-x': id", "must be 1-64"),
    ("tap=a,rx_bw=fast", "--net 'tap=a,rx_bw=fast': rx_bw", "not a size"),
    ("tap=a,tx_iops_burst=5", "--net 'tap=a,tx_iops_burst=5': tx_iops", "needs a non-zero rate"),
])
def test_net_option_errors(text, field, words):
    with pytest.raises(SpecError, match=words) as e:
        nets(text)
    assert e.value.field == field
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_ids_are_assigned_around_given_ones():
    assert [n.iface_id for n in nets("tap=a", "tap=b,id=net0", "tap=c")] == \
        ["net1", "net0", "net2"]
    assert [n.iface_id for n in nets("tap=a,id=net1", "tap=b")] == ["net1", "net0"]


@pytest.mark.parametrize("texts, words", [
    (["tap=a,mac=02:00:00:00:00:01", "tap=b,mac=02:00:00:00:00:01"],
     "MAC 02:00:00:00:00:01 is given to interfaces 'net0' and 'net1'"),
    (["tap=a,mac=02:00:00:00:00:0a", "tap=b,mac=02:00:00:00:00:0A"],
     "MAC 02:00:00:00:00:0a is given to interfaces"),
    (["tap=a", "tap=a"], "TAP a is given to interfaces 'net0' and 'net1'"),
    (["tap=a,id=x", "tap=b,id=x"], "interface id 'x' is used twice"),
])
def test_checks_across_nics(texts, words):
    spec = VmSpec(network_interfaces=nets(*texts))
    with pytest.raises(SpecError, match=words) as e:
        spec.validate()
    assert e.value.field == "network-interfaces"
    assert "\n" not in str(e.value)


def test_fifteen_byte_name_is_fine():
    VmSpec(network_interfaces=nets("tap=abcdefghijklmno")).validate()


def test_generated_macs_are_local_unicast_and_unique():
    seen = set()
    for _ in range(200):
        mac = generate_mac(seen)
        assert len(mac) == 6 and mac[0] & 0b10 and not mac[0] & 0b01
        assert mac not in seen
        seen.add(mac)
    # a taken address is never handed out again
    values = iter([bytes.fromhex("020000000001"), bytes.fromhex("020000000002")])
    assert generate_mac({bytes.fromhex("020000000001")}, lambda n: next(values)) == \
        bytes.fromhex("020000000002")


def test_mac_round_trip():
    assert format_mac(parse_mac("02:0a:0B:0c:0d:0e")) == "02:0a:0b:0c:0d:0e"


def test_parse_mac_names_the_field():
    assert parse_mac is spec_parse_mac          # one parser, re-exported by kvmm.virtio.net
    with pytest.raises(SpecError, match="multicast") as e:
        parse_mac("03:00:00:00:00:01", "network-interfaces[0].guest_mac")
    assert e.value.field == "network-interfaces[0].guest_mac"
    with pytest.raises(SpecError) as e:
        parse_mac("nonsense")
    assert e.value.field == "guest_mac"


def test_vm_spec_checks_nets():
    spec = VmSpec(network_interfaces=[NetworkInterfaceSpec(iface_id="a", host_dev_name="t"),
                                      NetworkInterfaceSpec(iface_id="b", host_dev_name="t")])
    with pytest.raises(ValueError, match="TAP t is given to interfaces 'a' and 'b'"):
        spec.validate()


def test_ifreq_layouts():
    assert tapmod._IFREQ.size == 40 and tapmod._IFREQ_INT.size == 40   # sizeof(struct ifreq)


def test_interface_index_of_a_missing_interface():
    assert tapmod.interface_index("kvmm-nope-xyz") == 0
    assert tapmod.interface_mtu("kvmm-nope-xyz") == tapmod.DEFAULT_MTU


@pytest.mark.parametrize("args, words", [
    (["--net", "tap=t0,mac=02:00:00:00:00:0x"], "not six hex byte pairs"),
    (["--net", "tap=t0,mac=03:00:00:00:00:01"], "multicast"),
    (["--net", "tap=t0,mac=02:00:00:00:00:01", "--net", "tap=t1,mac=02:00:00:00:00:01"],
     "is given to interfaces 'net0' and 'net1'"),
    (["--net", "tap=t0", "--net", "tap=t0"], "TAP t0 is given to interfaces"),
    (["--net", "tap=t0,id=a", "--net", "tap=t1,id=a"], "interface id 'a' is used twice"),
    (["--net", "tap=sixteen-chars-xx"], "IFNAMSIZ"),
    (["--net", "tap"], "needs a value"),
    (["--net", "tap=t0,rx_bw=lots"], "rx_bw"),
])
@pytest.mark.parametrize("command", ["run", "boot-test"])
def test_cli_rejects_bad_nets_before_boot(capsys, tmp_path, args, words, command):
    extra = ["--success", "x"] if command == "boot-test" else []
    status = cli.main([command, "--kernel", str(tmp_path / "no-such-kernel"), *extra, *args])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmm: "), err
    assert words in lines[0]


# open_nets: every TAP or none, MACs for the NICs without one. -------------------------------
class FakeTap:
    def __init__(self, name, opened):
        self.name = name
        self.closed = False
        opened.append(self)

    def mtu(self):
        return 1500

    def close(self):
        self.closed = True


def test_open_nets_generates_macs_not_given_to_another_nic(monkeypatch):
    from kvmm.virtio.net import open_nets
    opened = []
    monkeypatch.setattr(tapmod, "open_tap", lambda name: FakeTap(name, opened))
    taken = bytes.fromhex("020000000001")
    picks = iter([taken, bytes.fromhex("020000000002")])
    monkeypatch.setattr("kvmm.virtio.net.config.generate_mac",
                        lambda used: next(m for m in picks if m not in used))
    a, b = open_nets(nets("tap=a,mac=02:00:00:00:00:01,id=lan", "tap=b"))
    assert (a.id, a.tap.name, a.mac, a.mtu) == ("lan", "a", taken, 1500)
    assert (b.id, b.tap.name, b.mac) == ("net0", "b", bytes.fromhex("020000000002"))
    assert a.spec.iface_id == "lan" and b.spec.guest_mac is None
    a.close()
    assert opened[0].closed and not opened[1].closed


def test_open_nets_is_all_or_nothing(monkeypatch):
    from kvmm.virtio.net import NetError, open_nets
    opened = []

    def open_tap(name):
        if name == "bad":
            raise tapmod.TapError(errno.ENODEV, f"cannot open TAP {name}: create it first")
        return FakeTap(name, opened)
    monkeypatch.setattr(tapmod, "open_tap", open_tap)
    with pytest.raises(NetError, match="network interface 'net1' \\(TAP bad\\): cannot open") as e:
        open_nets(nets("tap=good", "tap=bad"))
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert [t.closed for t in opened] == [True]
