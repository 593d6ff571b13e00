"""Parameter-server addresses (``host:port``), parsed and checked in one place.

gRPC accepts a malformed address and folds it into something else: port
99999 is taken modulo 65536 (it listens on 34463), 65536 on a random port,
a missing port means 443. So every address a user or a cluster gives is
checked here, before any process starts, and the error names where it came
from (the flag, the cluster file). Every role, the launcher and the cluster
resolution use these functions, so there is one rule:

- ``host:port``, the port a decimal integer in 1-65535, always given;
- an IPv6 host in brackets: ``[::1]:50051`` (an unbracketed one is ambiguous);
- port 0 only where it means "pick a free port": a server's listening
  address (``--role=ps``; the launcher starts its servers that way);
- a sharded server: every shard's address in shard order, comma-separated.

No TensorFlow, no gRPC: the launcher and the CLI check addresses before
importing anything heavy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections.abc import Iterable

MAX_PORT = 65535
# A DNS name or an IPv4 address: labels of letters, digits, '-' and '_'
# (Docker and Kubernetes service names use '_' and '-'), separated by dots.
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_EXAMPLE = "e.g. 127.0.0.1:50051, or [::1]:50051 for IPv6"


class AddressError(ValueError):
    """An address that is not a valid ``host:port``.

    ``str()`` is ``<where>=<address>: <reason>``; ``reason`` alone is there
    for callers that name the address their own way.
    """

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: {reason}")
        self.label = label
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Address:
    """One checked ``host:port``; ``str()`` gives it back in gRPC's form.

    Attributes:
      host: A host name, an IPv4 address, or an IPv6 address without brackets.
      port: 1-65535, or 0 ("pick a free port") where that was allowed.
    """

    host: str
    port: int

    def __str__(self) -> str:
        return format_address(self.host, self.port)


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(port: int, where: str, allow_zero: bool = False) -> int:
    """Returns ``port`` if it is a port number (0 only with ``allow_zero``).

    Raises:
      AddressError: Out of range; the message starts with ``where``.
    """
    low = 0 if allow_zero else 1
    if not low <= port <= MAX_PORT:
        # Port 0 means "any free port" only to a server choosing where to listen.
        allowed = "0-65535, 0: any free port" if allow_zero else "1-65535"
        if port == 0 and not allow_zero:
            allowed += "; 0, any free port, is only for a server's own --ps_address"
        raise AddressError(where, f"port {port} is out of range ({allowed})")
    return port


def parse(text: str, where: str = "--ps_address", allow_port_zero: bool = False) -> Address:
    """Parses and checks one ``host:port``.

    Args:
      text: The address.
      where: What gave it (a flag, a file, an environment variable): the
        error message starts with ``<where>=<text>``.
      allow_port_zero: Port 0 is accepted (a server's "pick a free port").

    Raises:
      AddressError: Not ``host:port`` with a valid host and port, said why.
    """
    if not text.strip():
        raise AddressError(where, f"empty: expected host:port ({_EXAMPLE})")
    if "," in text:
        raise AddressError(
            f"{where}={text}",
            "one host:port expected here (a server shard listens on one address; the "
            "comma-separated list of every shard is for its clients)",
        )
    return _parse_one(text.strip(), f"{where}={text}", allow_port_zero)


def _parse_one(text: str, label: str, allow_port_zero: bool) -> Address:
    """``parse`` of a non-empty address; errors start with ``label``."""
    if text.startswith("["):
        host, sep, port = _split_bracketed(text, label)
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise AddressError(label, f"no port (expected host:port, {_EXAMPLE})")
        if ":" in host:
            raise AddressError(label, "an IPv6 address goes in brackets, e.g. [::1]:50051")
        _check_host_name(host, label)
    if not sep or not port:
        raise AddressError(label, f"no port (expected host:port, {_EXAMPLE})")
    if not (port.isascii() and port.isdigit()):
        raise AddressError(label, f"port {port!r} is not a number (expected host:port)")
    return Address(host, check_port(int(port), label, allow_zero=allow_port_zero))


def _split_bracketed(text: str, label: str) -> tuple[str, str, str]:
    """(host, ':', port) of ``[ipv6]:port``."""
    inside, bracket, rest = text[1:].partition("]")
    if not bracket:
        raise AddressError(label, "no closing ']' after the IPv6 address")
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        raise AddressError(label, f"{inside!r} is not an IPv6 address") from None
    if rest and not rest.startswith(":"):
        raise AddressError(label, f"expected ':port' after ']', got {rest!r}")
    return inside, rest[:1], rest[1:]


def _check_host_name(host: str, label: str) -> None:
    if not host:
        raise AddressError(
            label, "no host (expected host:port; 0.0.0.0:PORT listens on every interface)"
        )
    if not _HOST_NAME.fullmatch(host):
        raise AddressError(label, f"{host!r} is not a host name or IP address")
    if re.fullmatch(r"[0-9.]+", host):  # Digits and dots only: it must be an IPv4 address.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError(label, f"{host!r} is not an IPv4 address") from None


def parse_list(
    text: str, where: str = "--ps_address", allow_port_zero: bool = False
) -> list[Address]:
    """Parses a comma-separated list of ``host:port`` (a sharded server's, in shard order).

    Raises:
      AddressError: The list is empty, has an empty entry, or an entry is
        not a valid address (named, with its position).
    """
    if not text.strip():
        raise AddressError(where, f"empty: expected host:port ({_EXAMPLE})")
    entries = text.split(",")
    if len(entries) == 1:
        return [parse(text, where, allow_port_zero)]
    result = []
    for i, entry in enumerate(entries):
        if not entry.strip():
            raise AddressError(f"{where}={text}", f"entry {i + 1} is empty (a stray comma?)")
        label = f"{where}={text} (entry {i + 1}, {entry.strip()!r})"
        result.append(_parse_one(entry.strip(), label, allow_port_zero))
    return result


def join(addresses: Iterable[Address]) -> str:
    """The comma-separated form ``parse_list`` reads."""
    return ",".join(str(a) for a in addresses)


def check_can_listen(address: Address) -> None:
    """Binds ``address`` for a moment, as a server would, to tell a taken port early and plainly.

    gRPC reports a failed bind only as "Failed to bind" (plus a log line of
    its own); this says why (in use, not this host's address) before the
    server restores a checkpoint or starts a thread. The server's own bind
    stays the real test: a port taken in between still fails there.
    Port 0 is not probed (any free port).

    Raises:
      OSError: The address cannot be bound, with the system's reason.
    """
    if address.port == 0:
        return
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        # As gRPC does: a port in TIME_WAIT is free to a server.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)
