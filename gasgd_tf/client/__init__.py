"""Clients of the parameter service (numpy and grpc only, no TensorFlow)."""

from gasgd_tf.client.client import (
    ParameterClient,
    PushAck,
    Registration,
    RequestRejectedError,
    ServerRestartedError,
    ServerUnavailableError,
)
from gasgd_tf.client.sharded import ShardedClient, Version, make_client, version_number

__all__ = [
    "ParameterClient",
    "PushAck",
    "Registration",
    "RequestRejectedError",
    "ServerRestartedError",
    "ServerUnavailableError",
    "ShardedClient",
    "Version",
    "make_client",
    "version_number",
]
