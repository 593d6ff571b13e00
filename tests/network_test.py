"""The emulated network of benchmarks/network.py: rates, tc commands, a real shaped namespace."""

import contextlib
import subprocess
import sys
import time

import pytest

from benchmarks import network

REASON = network.unavailable_reason()
needs_namespaces = pytest.mark.skipif(REASON is not None, reason=f"no shaped network: {REASON}")


@pytest.mark.parametrize(
    "text, bits",
    [
        ("80mbit", 80_000_000),
        ("1.5gbit", 1_500_000_000),
        ("500kbit", 500_000),
        ("2000", 2000),
        (" 40Mbit ", 40_000_000),
        (13_000_000, 13_000_000),
        ("none", None),
        ("", None),
        (None, None),
    ],
)
def test_rates_are_bits_per_second_in_tcs_units(text, bits):
    assert network.parse_rate(text) == bits


@pytest.mark.parametrize(
    "text, message",
    [
        ("80mbps", "unknown rate unit 'mbps'"),  # tc's megabytes: refused, not guessed.
        ("fast", "not a rate"),
        ("500bit", "below 1kbit"),
        ("-5mbit", "not a rate"),
    ],
)
def test_a_bad_rate_is_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        network.parse_rate(text)


def test_rates_print_in_the_largest_whole_unit():
    assert network.format_rate(80_000_000) == "80mbit"
    assert network.format_rate(1_500_000_000) == "1.5gbit"
    assert network.format_rate(640_000) == "640kbit"
    assert network.format_rate(None) == "unshaped"


def test_each_direction_gets_its_class_chosen_by_the_server_port():
    commands = [" ".join(c) for c in network.htb_commands(40_000_000, 20_000_000, [5000])]
    assert commands == [
        "tc qdisc add dev lo root handle 1: htb default 30 r2q 1000",
        "tc class add dev lo parent 1: classid 1:30 htb rate 10000000000bit",
        "tc class add dev lo parent 1: classid 1:10 htb rate 40000000bit ceil 40000000bit",
        "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport 5000 0xffff "
        "flowid 1:10",
        "tc class add dev lo parent 1: classid 1:20 htb rate 20000000bit ceil 20000000bit",
        "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport 5000 0xffff "
        "flowid 1:20",
    ]


def test_every_shard_port_and_pulled_port_is_filtered_and_unshaped_means_no_qdisc():
    commands = [" ".join(c) for c in network.htb_commands(1000, None, [7, 8], pull_ports=[9])]
    filters = [c.split("match ip ")[1] for c in commands if "filter" in c]
    assert filters == ["dport 7 0xffff flowid 1:10", "dport 8 0xffff flowid 1:10",
                       "sport 9 0xffff flowid 1:10"]  # fmt: skip
    assert not any("1:20" in c for c in commands)  # From the server: unshaped.
    assert network.htb_commands(None, None, [7]) == []


def test_server_ports_must_be_one_consecutive_range():
    assert network.check_ports([20052, 20051]) == [20052, 20051]
    with pytest.raises(ValueError, match="consecutive"):
        network.check_ports([20051, 20053])
    with pytest.raises(ValueError, match="not in 1-65535"):
        network.check_ports([70000])
    with pytest.raises(ValueError, match="no server port"):
        network.check_ports([])


def test_class_counters_are_read_from_tc_output():
    text = (
        "class htb 1:10 root prio 0 rate 40Mbit ceil 40Mbit burst 1600b cburst 1600b \n"
        " Sent 7561058 bytes 912 pkt (dropped 0, overlimits 0 requeues 0) \n"
        " backlog 0b 0p requeues 0\n"
        "class htb 1:20 root prio 0 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b \n"
        " Sent 3788024 bytes 455 pkt (dropped 0, overlimits 0 requeues 0) \n"
        "class htb 1:30 root prio 0 rate 10Gbit ceil 10Gbit burst 0b cburst 0b \n"
        " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n"
    )
    assert network.parse_class_stats(text) == {
        "to_server": 7561058,
        "from_server": 3788024,
        "other": 0,
    }


def test_a_command_past_its_timeout_is_killed_with_its_children():
    start = time.monotonic()
    result = network.run_command(["sh", "-c", "sleep 30 & sleep 30"], timeout_s=0.5)
    assert result.timed_out and result.returncode is None
    assert time.monotonic() - start < 10


def test_a_bad_rate_on_the_command_line_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        network.main(["--to-server=80mbps"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "unknown rate unit 'mbps'" in err[0]


# -- A real namespace (root, ip, tc) ------------------------------------------------------


@needs_namespaces
def test_a_shaped_link_carries_about_its_rate_each_way_and_is_deleted_after():
    with network.shaped_namespace("40mbit", "20mbit", [network.SERVER_PORT]) as ns:
        name = ns.name
        assert name in network.list_namespaces()
        probe = network.measure_tcp(ns, seconds=1.0)
        counted = ns.class_bytes()
    assert 0.7 < probe["to_server_ratio"] < 1.15, probe
    assert 0.7 < probe["from_server_ratio"] < 1.15, probe
    # The filters put the probe's bytes in the right class (headers included).
    assert counted["to_server"] >= probe["to_server_bytes"]
    assert counted["from_server"] >= probe["from_server_bytes"]
    assert name not in network.list_namespaces()


@needs_namespaces
def test_the_namespace_and_its_processes_are_gone_also_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with network.shaped_namespace("10mbit", "10mbit") as ns:
            name = ns.name
            sleeper = ns.popen(["sleep", "60"])
            raise RuntimeError("boom")
    assert name not in network.list_namespaces()
    assert sleeper.wait(timeout=10) is not None  # Stopped, not left running.


@needs_namespaces
def test_a_namespace_left_by_a_killed_run_is_deleted_by_the_next():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"gasgd-test-{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert network.remove_stale("gasgd-test-") == [name]
        assert name not in network.list_namespaces()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)


@needs_namespaces
def test_the_port_range_inside_is_the_namespaces_own():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        host = f.read().split()
    with network.shaped_namespace(None, None) as ns:
        ns.set_port_range(network.SERVER_PORT, network.SERVER_PORT)
        assert ns.port_range() == f"{network.SERVER_PORT} {network.SERVER_PORT}"
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            assert f.read().split() == host
