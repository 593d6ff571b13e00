"""The framework-free parameter server: numpy, grpc and tensorboard's protos, never TensorFlow."""

from gasgd_tf.server.optimizers import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    RMSprop,
    ServerOptimizer,
    make_optimizer,
)
from gasgd_tf.server.server import ParameterServer
from gasgd_tf.server.servicer import ParameterServicer
from gasgd_tf.server.staleness import StalenessConfig
from gasgd_tf.server.store import DivergedError, NotInitializedError, ParameterStore, PushResult

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "RMSprop",
    "StalenessConfig",
    "DivergedError",
    "NotInitializedError",
    "ParameterServer",
    "ParameterServicer",
    "ParameterStore",
    "PushResult",
    "ServerOptimizer",
    "make_optimizer",
]
