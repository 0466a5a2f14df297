"""NIC options (kvmm/virtio/net/config.py), TAP name checks, and the CLI's
one-line errors for bad --net input (exit status 2, nothing started)."""
import pytest

from kvmm import cli
from kvmm.config import VmConfig
from kvmm.virtio.net import (
    NetConfig, NetError, check_nets, format_mac, generate_mac, parse_mac, parse_net,
)
from kvmm.virtio.net import tap as tapmod


def test_parse_net_full():
    c = parse_net("tap=tap0,mac=02:AB:cd:00:00:01,id=lan")
    assert (c.tap, c.mac, c.id) == ("tap0", bytes.fromhex("02abcd000001"), "lan")
    assert c.describe() == "tap=tap0,mac=02:ab:cd:00:00:01,id=lan"


def test_parse_net_minimal():
    c = parse_net("tap=kvmm-tap")
    assert (c.tap, c.mac, c.id) == ("kvmm-tap", None, None)


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("mac=02:00:00:00:00:01", "names no TAP"),
    ("tap=", "names no TAP"),
    ("tap=a,tap=b", "given twice"),
    ("tap=a,speed=10", "unknown --net option 'speed'"),
    ("tap=a,ro", "not key=value"),
    ("tap=a,mac=02:00:00:00:00", "not six hex byte pairs"),
    ("tap=a,mac=02-00-00-00-00-01", "not six hex byte pairs"),
    ("tap=a,mac=02:00:00:00:00:0g", "not six hex byte pairs"),
    ("tap=a,mac=02:00:00:00:00:001", "not six hex byte pairs"),
    ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
    ("tap=a,mac=ff:ff:ff:ff:ff:ff", "multicast"),
    ("tap=a,mac=00:00:00:00:00:00", "all zeros"),
])
def test_parse_net_errors(text, words):
    with pytest.raises(NetError, match=words) as e:
        parse_net(text)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_check_nets_assigns_ids_around_given_ones():
    nets = [parse_net("tap=a"), parse_net("tap=b,id=net0"), parse_net("tap=c")]
    check_nets(nets)
    assert [n.id for n in nets] == ["net1", "net0", "net2"]
    check_nets(nets)                           # idempotent
    assert [n.id for n in nets] == ["net1", "net0", "net2"]


@pytest.mark.parametrize("texts, words", [
    (["tap=a,mac=02:00:00:00:00:01", "tap=b,mac=02:00:00:00:00:01"], "given to two NICs"),
    (["tap=a", "tap=a"], "TAP a is given to two NICs"),
    (["tap=a,id=x", "tap=b,id=x"], "id x is given twice"),
    (["tap=a-name-that-is-too-long"], "1 to 15 bytes"),
    (["tap=abcdefghijklmnop"], "1 to 15 bytes"),
    (["tap=a/b"], "may not contain"),
    (["tap=a:b"], "may not contain"),
    (["tap=a,id=-x"], "must be 1-32"),
])
def test_check_nets_errors(texts, words):
    with pytest.raises(NetError, match=words) as e:
        check_nets([parse_net(t) for t in texts])
    assert "\n" not in str(e.value)


def test_fifteen_byte_name_is_fine():
    check_nets([parse_net("tap=abcdefghijklmno")])


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


def test_vm_config_checks_nets():
    config = VmConfig(nets=[NetConfig("a"), NetConfig("a")])
    with pytest.raises(ValueError, match="given to two NICs"):
        config.validate()


def test_ifreq_layouts():
    assert tapmod._IFREQ.size == 40 and tapmod._IFREQ_INT.size == 40   # sizeof(struct ifreq)


def test_interface_index_of_a_missing_interface():
    assert tapmod.interface_index("kvmm-nope-xyz") == 0
    assert tapmod.interface_mtu("kvmm-nope-xyz") == tapmod.DEFAULT_MTU


@pytest.mark.parametrize("args, words", [
    (["--net", "tap=t0,mac=02:00:00:00:00:0x"], "not six hex byte pairs"),
    (["--net", "tap=t0,mac=03:00:00:00:00:01"], "multicast"),
    (["--net", "tap=t0,mac=02:00:00:00:00:01", "--net", "tap=t1,mac=02:00:00:00:00:01"],
     "given to two NICs"),
    (["--net", "tap=t0", "--net", "tap=t0"], "TAP t0 is given to two NICs"),
    (["--net", "tap=t0,id=a", "--net", "tap=t1,id=a"], "id a is given twice"),
    (["--net", "tap=sixteen-chars-xx"], "IFNAMSIZ"),
    (["--net", "tap"], "not key=value"),
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
