"""Who may talk to the parameter service: bearer tokens and TLS (grpc only, no TensorFlow).

Both are optional and configured in ``config.security``:

* **Bearer token.** With a token set (read from ``security.token_file``, or
  from the environment variable named by ``security.token_env``), the server
  refuses every call of the parameter service whose ``authorization``
  metadata is not ``Bearer <token>`` with UNAUTHENTICATED, and clients send
  it on every call. The comparison takes constant time, and the token is
  never logged or written to config.json (only where it comes from is).
  The standard health service stays open, so that probes need no secret.
* **TLS.** With ``security.tls_cert`` and ``security.tls_key`` (PEM files) the
  server listens with TLS; clients verify it against ``security.tls_ca``.
  With ``security.tls_client_auth`` the server also requires a client
  certificate signed by ``tls_ca`` (mutual TLS), which clients present from
  ``security.tls_client_cert`` and ``security.tls_client_key``.
  ``security.tls_server_name`` makes clients check the server's certificate
  for that name instead of the host in the address: for a certificate
  without an IP SAN reached by IP (127.0.0.1), or behind a load balancer.

A token over a plaintext channel can be read by anyone on the path: use
both on networks you do not control. The local launcher binds its servers to
127.0.0.1 whatever is set here.
"""

from __future__ import annotations

import dataclasses
import hmac
import os

import grpc

AUTH_HEADER = "authorization"
HEALTH_SERVICE = "grpc.health.v1.Health"


class SecurityConfigError(ValueError):
    """A token or certificate file that cannot be read, or a half-configured TLS."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What one process needs to serve or to call securely.

    Attributes:
      token: The bearer token, or None for no authentication.
      tls: Server or channel credentials, or None for plaintext.
      server_name: For clients with TLS: the name to check in the server's
        certificate instead of the host in the address (gRPC's channel
        option ``grpc.ssl_target_name_override``); None: the host in the
        address.
    """

    token: str | None = dataclasses.field(default=None, repr=False)  # Never printed.
    tls: grpc.ServerCredentials | grpc.ChannelCredentials | None = None
    server_name: str | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata a client sends: the bearer token, if any."""
        return ((AUTH_HEADER, f"Bearer {self.token}"),) if self.token else ()


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SecurityConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None


def read_token(security) -> str | None:
    """The bearer token from ``security.token_file`` or the ``security.token_env`` variable.

    Raises:
      SecurityConfigError: The file cannot be read, or holds no token.
    """
    if security.token_file:
        token = _read(security.token_file, "token file").decode("utf-8", "replace").strip()
        if not token:
            raise SecurityConfigError(f"token file {security.token_file!r} is empty")
        return token
    if security.token_env:
        token = os.environ.get(security.token_env, "").strip()
        return token or None
    return None


def server_credentials(security) -> Credentials:
    """The token and TLS credentials a server uses (``config.security``).

    Raises:
      SecurityConfigError: Unreadable files, or only one of cert and key.
    """
    cert = _read(security.tls_cert, "TLS certificate")
    key = _read(security.tls_key, "TLS key")
    if bool(cert) != bool(key):
        raise SecurityConfigError("security.tls_cert and security.tls_key go together")
    tls = None
    if cert:
        ca = _read(security.tls_ca, "TLS CA certificate")
        if security.tls_client_auth and not ca:
            raise SecurityConfigError("security.tls_client_auth needs security.tls_ca")
        tls = grpc.ssl_server_credentials(
            [(key, cert)],
            root_certificates=ca if security.tls_client_auth else None,
            require_client_auth=bool(security.tls_client_auth),
        )
    return Credentials(read_token(security), tls)


def client_credentials(security) -> Credentials:
    """The token and TLS channel credentials a client uses (``config.security``).

    TLS is on when the server's is (``tls_cert`` set) or a CA is given;
    ``tls_server_name`` then names the server in its certificate.
    """
    tls = None
    if security.tls_cert or security.tls_ca:
        client_cert = _read(security.tls_client_cert, "TLS client certificate")
        client_key = _read(security.tls_client_key, "TLS client key")
        if bool(client_cert) != bool(client_key):
            raise SecurityConfigError(
                "security.tls_client_cert and security.tls_client_key go together"
            )
        tls = grpc.ssl_channel_credentials(
            root_certificates=_read(security.tls_ca, "TLS CA certificate"),
            private_key=client_key,
            certificate_chain=client_cert,
        )
    # Only with TLS: a plaintext channel checks no certificate.
    server_name = (security.tls_server_name or None) if tls is not None else None
    return Credentials(read_token(security), tls, server_name)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    Health checks (``Health/Check``) are exempt: load balancers and probes
    carry no secret. ``Health/Watch`` is not: each watch holds a server
    thread, and anonymous callers must not be able to take them all.
    """

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = {
            "unary_unary": grpc.unary_unary_rpc_method_handler(deny),
            "unary_stream": grpc.unary_stream_rpc_method_handler(deny),
            "stream_unary": grpc.stream_unary_rpc_method_handler(deny),
            "stream_stream": grpc.stream_stream_rpc_method_handler(deny),
        }

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method == f"/{HEALTH_SERVICE}/Check":
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get(AUTH_HEADER, "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # Unknown method: let gRPC answer UNIMPLEMENTED.
            return None
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        return self._deny[kind]
