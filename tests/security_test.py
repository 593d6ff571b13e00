"""Bearer tokens, TLS and mutual TLS, health checking and reflection, over real gRPC."""

import datetime
import ipaddress

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gasgd_tf import config_base, security, wire
from gasgd_tf.client import ParameterClient, RequestRejectedError, ServerUnavailableError
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (8,)),)


def _security(**fields):
    config = config_base.get_base_config().security
    config.update(fields)
    return config


@pytest.fixture
def store():
    s = ParameterStore(SGD(learning_rate=1.0))
    s.initialize("init", SPECS, np.arange(8, dtype=np.float32))
    return s


def _serve(store, credentials):
    return ParameterServer(store, credentials=credentials).start()


def test_token_is_required_on_every_call(store, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = _serve(store, security.server_credentials(_security(token_file=str(token_file))))
    try:
        good = security.client_credentials(_security(token_file=str(token_file)))
        with ParameterClient(server.address, "w", credentials=good) as client:
            assert client.fetch()[0] == 0
            client.push(np.ones(8, np.float32), 0)
        for credentials in (None, security.Credentials(token="wrong")):
            with ParameterClient(server.address, "x", credentials=credentials) as client:
                with pytest.raises(RequestRejectedError, match="UNAUTHENTICATED") as e:
                    client.fetch()
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(RequestRejectedError, match="UNAUTHENTICATED"):
                    client.register(SPECS)
                client._specs = SPECS  # As if it had registered: its push is refused too.
                with pytest.raises(RequestRejectedError, match="UNAUTHENTICATED"):
                    client.push(np.ones(8, np.float32), 0)
        assert store.version == 1  # Only the authenticated push landed.
        # The environment variable works too; the token is in no message.
        monkeypatch.setenv("GASGD_TF_TOKEN", "s3cret")
        with ParameterClient(
            server.address, "w", credentials=security.client_credentials(_security())
        ) as client:
            assert client.status().version == 1
        # Health checks need no token.
        channel = grpc.insecure_channel(server.address)
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=wire.SERVICE_NAME), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=None)


def test_reflection_lists_the_parameter_service(store):
    server = _serve(store, None)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert wire.SERVICE_NAME in names and "grpc.health.v1.Health" in names
    finally:
        server.stop(grace=None)


# -- TLS ---------------------------------------------------------------------------


def _certificates(folder, server_dns_names=None):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.

    Args:
      folder: Where the PEM files go.
      server_dns_names: If given, the server certificate's only SANs: these
        DNS names (no IP address, no localhost).
    """
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer_key=None, issuer_name=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    ca_key, ca_cert = make("test CA", ca=True)
    files = {}

    def write(name, key, cert):
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (folder / f"{name}.key").write_bytes(key_pem)
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[name] = (str(folder / f"{name}.pem"), str(folder / f"{name}.key"))

    write("ca", ca_key, ca_cert)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    if server_dns_names is not None:
        san = [x509.DNSName(name) for name in server_dns_names]
    write("server", *make("server", ca_key, ca_cert.subject, san=san))
    write("client", *make("worker", ca_key, ca_cert.subject))
    return files


def test_tls_and_mutual_tls_round_trip(store, tmp_path):
    files = _certificates(tmp_path)
    ca = files["ca"][0]
    server_side = dict(tls_cert=files["server"][0], tls_key=files["server"][1], tls_ca=ca)
    server = _serve(store, security.server_credentials(_security(**server_side)))
    try:
        assert server.tls
        trusted = security.client_credentials(_security(tls_ca=ca))
        with ParameterClient(server.address, "w", credentials=trusted) as client:
            version, _, flat = client.fetch()
            assert flat.tobytes() == np.arange(8, dtype=np.float32).tobytes()
        # A plaintext client cannot talk to a TLS server.
        with ParameterClient(server.address, "x", retry_secs=1, timeout_secs=2) as client:
            with pytest.raises(Exception, match="unreachable|UNAVAILABLE"):
                client.fetch()
    finally:
        server.stop(grace=None)

    mutual = dict(server_side, tls_client_auth=True)
    server = _serve(store, security.server_credentials(_security(**mutual)))
    try:
        with_cert = security.client_credentials(
            _security(
                tls_ca=ca, tls_client_cert=files["client"][0], tls_client_key=files["client"][1]
            )
        )
        with ParameterClient(server.address, "w", credentials=with_cert) as client:
            assert client.status().version == 0
        without = security.client_credentials(_security(tls_ca=ca))
        with ParameterClient(server.address, "x", credentials=without, retry_secs=1) as client:
            with pytest.raises(Exception, match="unreachable|UNAVAILABLE"):
                client.status()
    finally:
        server.stop(grace=None)


# What gRPC reports when the certificate does not name the host it checks
# for (the wording differs between grpcio versions; the status does not).
NAME_CHECK_FAILED = r"(?is)UNAVAILABLE.*(hostname|handshake|peer name|certificate)"


def test_tls_server_name_checks_the_certificate_for_that_name(store, tmp_path):
    # A certificate that names only "ps.internal" (no IP SAN): a client that
    # dials 127.0.0.1 fails the handshake's host name check, unless it is
    # told to check for "ps.internal" instead.
    files = _certificates(tmp_path, server_dns_names=["ps.internal"])
    ca = files["ca"][0]
    server_side = dict(tls_cert=files["server"][0], tls_key=files["server"][1], tls_ca=ca)
    server = _serve(store, security.server_credentials(_security(**server_side)))
    try:
        assert server.address.startswith("127.0.0.1:")
        plain = security.client_credentials(_security(tls_ca=ca))
        assert plain.server_name is None
        with ParameterClient(
            server.address, "x", credentials=plain, retry_secs=1, timeout_secs=2
        ) as client:
            with pytest.raises(ServerUnavailableError, match=NAME_CHECK_FAILED):
                client.status()
        named = security.client_credentials(_security(tls_ca=ca, tls_server_name="ps.internal"))
        assert named.server_name == "ps.internal"
        with ParameterClient(server.address, "w", credentials=named) as client:
            version, _, flat = client.fetch()
            assert version == 0
            assert flat.tobytes() == np.arange(8, dtype=np.float32).tobytes()
        # The override is a name to check, not a wildcard: a wrong one fails too.
        wrong = security.client_credentials(_security(tls_ca=ca, tls_server_name="other.internal"))
        with ParameterClient(
            server.address, "y", credentials=wrong, retry_secs=1, timeout_secs=2
        ) as client:
            with pytest.raises(ServerUnavailableError, match=NAME_CHECK_FAILED):
                client.status()
    finally:
        server.stop(grace=None)
    # Without TLS there is no certificate to check, so no name to carry.
    assert security.client_credentials(_security(tls_server_name="ps.internal")).tls is None
    assert security.client_credentials(_security(tls_server_name="ps.internal")).server_name is None


def test_half_configured_security_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="security.tls_cert and security.tls_key"):
        config_base.finalize(config_base.from_dict({"security": {"tls_cert": "c.pem"}}))
    with pytest.raises(ValueError, match="tls_client_auth needs"):
        config_base.finalize(config_base.from_dict({"security": {"tls_client_auth": True}}))
    with pytest.raises(ValueError, match="tls_server_name needs security.tls_ca"):
        config_base.finalize(config_base.from_dict({"security": {"tls_server_name": "ps"}}))
    for bad in ("", "ps internal"):
        with pytest.raises(ValueError, match="tls_server_name must be a host name"):
            config_base.finalize(
                config_base.from_dict({"security": {"tls_server_name": bad, "tls_ca": "ca.pem"}})
            )
    named = {"security": {"tls_server_name": "ps.internal", "tls_ca": "ca.pem"}}
    assert config_base.finalize(config_base.from_dict(named)).security.tls_server_name == (
        "ps.internal"
    )
    with pytest.raises(security.SecurityConfigError, match="cannot read token file"):
        security.read_token(_security(token_file=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(security.SecurityConfigError, match="is empty"):
        security.read_token(_security(token_file=str(empty)))


@pytest.mark.slow
def test_a_whole_run_with_token_and_mutual_tls(digits_data_dir, tmp_path):
    # Every role (launcher, server, workers, evaluator) uses the config's
    # credentials; the token is in no log and not in config.json.
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    files = _certificates(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text("run-s3cret")
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            "--config=configs/default.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={digits_data_dir}",
            "--config.num_steps=60",
            f"--config.security.token_file={token_file}",
            f"--config.security.tls_cert={files['server'][0]}",
            f"--config.security.tls_key={files['server'][1]}",
            f"--config.security.tls_ca={files['ca'][0]}",
            "--config.security.tls_client_auth=True",
            f"--config.security.tls_client_cert={files['client'][0]}",
            f"--config.security.tls_client_key={files['client'][1]}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["server_version"] == 120
    texts = [result.stdout, result.stderr, (workdir / "config.json").read_text()]
    for name in os.listdir(workdir / "logs"):
        texts.append((workdir / "logs" / name).read_text())
    assert not any("run-s3cret" in t for t in texts)
