"""The command line's mistakes and failures: one ``error:`` line, status 2 or 1, no traceback.

Address rules and message formatting are tested in-process (fast); a few
real processes of ``python -m gasgd_tf.main`` cover each class of error
(at flag parsing, in main, at run time). None of them imports TensorFlow:
every check runs before a role starts.
"""

import socket
import subprocess
import sys

import pytest
from absl import flags
from conftest import REPO_ROOT
from ml_collections import config_flags

from gasgd_tf import addresses, cluster
from gasgd_tf import main as cli
from gasgd_tf.addresses import Address, AddressError

# --- host:port, one rule (gasgd_tf/addresses.py) ---------------------------------------------

GOOD = [
    ("127.0.0.1:50051", False, Address("127.0.0.1", 50051)),
    ("localhost:1", False, Address("localhost", 1)),
    ("my_svc-1.ns.svc.cluster.local:65535", False, Address("my_svc-1.ns.svc.cluster.local", 65535)),
    ("[::1]:50051", False, Address("::1", 50051)),
    ("[fe80::1%eth0]:80", False, Address("fe80::1%eth0", 80)),
    (" 10.0.0.2:7 ", False, Address("10.0.0.2", 7)),
    ("0.0.0.0:0", True, Address("0.0.0.0", 0)),  # A server's "any free port".
]

BAD = [
    # What gRPC folded silently: 99999 % 65536 = 34463; 65536 -> random; no port -> 443.
    ("127.0.0.1:99999", False, r"port 99999 is out of range \(1-65535\)"),
    ("127.0.0.1:65536", False, "port 65536 is out of range"),
    ("127.0.0.1:99999", True, r"port 99999 is out of range \(0-65535"),
    ("127.0.0.1", False, "no port"),
    ("127.0.0.1:", False, "no port"),
    ("[::1]", False, "no port"),
    ("127.0.0.1:abc", False, "port 'abc' is not a number"),
    ("127.0.0.1:-1", False, "port '-1' is not a number"),
    ("127.0.0.1:+5", False, r"port '\+5' is not a number"),
    ("127.0.0.1:0", False, "port 0 is out of range.*only for a server's own"),
    (":50051", False, "no host"),
    ("::1:50051", False, "an IPv6 address goes in brackets"),
    ("[::1:50051", False, "no closing ']'"),
    ("[nothex]:50051", False, "'nothex' is not an IPv6 address"),
    ("[::1]50051", False, "expected ':port' after ']'"),
    ("999.0.0.1:50051", False, "'999.0.0.1' is not an IPv4 address"),
    ("my host:50051", False, "'my host' is not a host name"),
    ("", False, "empty"),
]


@pytest.mark.parametrize("text, allow_zero, expected", GOOD)
def test_valid_addresses_parse(text, allow_zero, expected):
    assert addresses.parse(text, allow_port_zero=allow_zero) == expected
    assert addresses.parse(str(expected), allow_port_zero=allow_zero) == expected  # Round trip.


@pytest.mark.parametrize("text, allow_zero, message", BAD)
def test_invalid_addresses_are_refused_naming_the_flag(text, allow_zero, message):
    with pytest.raises(AddressError, match=message) as raised:
        addresses.parse(text, "--ps_address", allow_port_zero=allow_zero)
    assert str(raised.value).startswith("--ps_address")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a:1,b:99999", r"--ps_address=a:1,b:99999 \(entry 2, 'b:99999'\): port 99999"),
        ("a:1,,b:2", "entry 2 is empty"),
        ("a:1,", "entry 2 is empty"),
        ("a:1,b", r"\(entry 2, 'b'\): no port"),
        (" ", "empty"),
    ],
)
def test_address_lists_check_every_entry(text, message):
    with pytest.raises(AddressError, match=message):
        addresses.parse_list(text, "--ps_address")


def test_address_lists_keep_shard_order_in_grpc_form():
    listed = addresses.parse_list("h0:1, [::1]:2 ,h2:3")
    assert listed == [Address("h0", 1), Address("::1", 2), Address("h2", 3)]
    assert addresses.join(listed) == "h0:1,[::1]:2,h2:3"


def test_clusters_use_the_same_rule():
    document = {"cluster": {"ps": ["p:99999"], "worker": ["w:1"]}, "task": {"type": "worker"}}
    with pytest.raises(cluster.ClusterError, match="cluster.ps.*port 99999 is out of range"):
        cluster.from_tf_config(document)
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NODELIST": "n1",
        "SLURM_TASKS_PER_NODE": "4",
    }
    with pytest.raises(cluster.ClusterError, match=r"shard 1's port .*65536 is out of range"):
        cluster.from_slurm(env, num_shards=2, base_port=65535)
    task = cluster.from_slurm(env, num_shards=2, base_port=65534)
    assert task.ps_address == "0.0.0.0:65534"


# --- what each role accepts (gasgd_tf/main.py) -------------------------------------------------


def test_a_server_defaults_to_loopback_and_may_ask_for_any_free_port():
    assert cli.checked_ps_address("ps", None, 1, "--ps_address") == "127.0.0.1:50051"
    assert cli.checked_ps_address("ps", "0.0.0.0:0", 1, "--ps_address") == "0.0.0.0:0"
    assert cli.checked_ps_address("ps", "[::]:5", 2, "--ps_address") == "[::]:5"


@pytest.mark.parametrize(
    "role, address, shards, message",
    [
        ("ps", "127.0.0.1:99999", 1, "--ps_address=127.0.0.1:99999: port 99999 is out of range"),
        ("ps", "127.0.0.1", 1, "--ps_address=127.0.0.1: no port"),
        ("ps", "a:1,b:2", 2, "one host:port expected here"),  # A server listens on one address.
        ("worker", None, 1, "--role=worker needs --ps_address"),
        ("worker", "h:0", 1, "port 0 is out of range"),  # A client cannot connect to "any".
        ("eval", "h:65536", 1, "port 65536 is out of range"),
        ("worker", "h:1", 2, "names 1 servers but ps.num_shards=2"),
        ("worker", "h:1,h:99999", 2, r"\(entry 2, 'h:99999'\): port 99999"),
    ],
)
def test_roles_refuse_bad_addresses_before_starting(role, address, shards, message):
    with pytest.raises(cli.UsageError, match=message) as raised:
        cli.checked_ps_address(role, address, shards, "--ps_address")
    assert raised.value.exitcode == cli.USAGE_EXIT


def test_clients_get_every_shard_normalized():
    got = cli.checked_ps_address("worker", " h:1,[::1]:2", 2, "--ps_address")
    assert got == "h:1,[::1]:2"


# --- messages for errors raised while absl parses flags --------------------------------------


def _parse_error(tmp_path, *args: str) -> tuple[Exception, list[str]]:
    """What parsing ``args`` with ml_collections' --config flag raises (a private FlagValues)."""
    argv = ["prog", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "c", flag_values=values, sys_argv=argv)
    try:
        values(argv)
    except Exception as e:  # noqa: BLE001 - whatever it raises is what we format.
        return e, argv
    raise AssertionError(f"{args} parsed")


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.nsync=10", "--config.nsync: the config has no field 'nsync'; did you mean "
         "--config.n_sync?"),
        ("--config.pss.learning_rate=1", "--config.pss.learning_rate: the config has no field "
         "'pss'; did you mean --config.ps?"),
        ("--config.ps.lrx=1", "--config.ps.lrx: the config has no field 'ps.lrx'"),
    ],
)  # fmt: skip
def test_an_unknown_config_field_is_one_line_naming_the_flag(tmp_path, override, message):
    error, argv = _parse_error(tmp_path, f"--config={REPO_ROOT}/configs/default.py", override)
    assert cli.flag_error_message(error, argv) == message


def test_a_missing_config_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.py")
    error, argv = _parse_error(tmp_path, f"--config={missing}", "--config.n_sync=3")
    assert cli.flag_error_message(error, argv) == f"--config={missing}: no such file"


def test_errors_that_are_no_flags_are_left_alone():
    # A bug inside a config file (not about an override on the line) keeps its traceback.
    assert cli.flag_error_message(AttributeError("x"), ["prog", "--config=c.py"]) is None
    assert cli.flag_error_message(RuntimeError("x"), ["prog"]) is None


def test_report_error_is_one_line_and_returns_the_status(capsys):
    assert cli.report_error("ps: boom", cli.ERROR_EXIT) == 1
    assert capsys.readouterr().err == "error: ps: boom\n"
    assert cli.report_error("bad flag", cli.USAGE_EXIT, show_usage=True) == 2
    assert capsys.readouterr().err.splitlines() == ["error: bad flag", cli.USAGE_LINE]


# --- real processes: one per class of error ---------------------------------------------------


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gasgd_tf.main", *args, f"--workdir={tmp_path / 'run'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess, status: int, line: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == [line], output
    assert result.returncode == status, output


def test_an_unknown_field_at_flag_parsing_exits_2(tmp_path):
    result = _cli(tmp_path, "--config=configs/default.py", "--config.nsync=10")
    line = "error: --config.nsync: the config has no field 'nsync'; did you mean --config.n_sync?"
    _assert_one_error_line(result, 2, line)
    assert len(result.stderr.splitlines()) == 1


def test_a_missing_config_file_exits_2(tmp_path):
    # No override: ml_collections reports the file only when main reads the config.
    result = _cli(tmp_path, "--config=configs/nope.py")
    _assert_one_error_line(result, 2, "error: --config=configs/nope.py: no such file")


def test_a_missing_config_json_exits_2(tmp_path):
    missing = tmp_path / "config.json"
    result = _cli(tmp_path, f"--config_json={missing}")
    _assert_one_error_line(result, 2, f"error: --config_json={missing}: No such file or directory")


def test_a_non_numeric_port_exits_2_before_the_server_starts(tmp_path):
    result = _cli(
        tmp_path, "--config=configs/default.py", "--role=ps", "--ps_address=127.0.0.1:abc"
    )
    line = "error: --ps_address=127.0.0.1:abc: port 'abc' is not a number (expected host:port)"
    _assert_one_error_line(result, 2, line)
    assert not (tmp_path / "run").exists()  # Nothing started, nothing written.


def test_a_port_in_use_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli(
            tmp_path, "--config=configs/default.py", "--role=ps", f"--ps_address=127.0.0.1:{port}"
        )
    line = f"error: ps: cannot listen on 127.0.0.1:{port}: Address already in use"
    _assert_one_error_line(result, 1, line)
    assert len(result.stderr.splitlines()) == 1  # Not gRPC's own log line either.
