"""Clients of the parameter service (numpy and grpc only, no TensorFlow)."""

from gasgd_tf.client.client import (
    ParameterClient,
    PushAck,
    Registration,
    RequestRejectedError,
    ServerUnavailableError,
)

__all__ = [
    "ParameterClient",
    "PushAck",
    "Registration",
    "RequestRejectedError",
    "ServerUnavailableError",
]
