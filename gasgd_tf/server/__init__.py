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
from gasgd_tf.server.store import (
    AheadOfServerError,
    DivergedError,
    NotInitializedError,
    ParameterStore,
    PushResult,
    RestoreError,
    StoreState,
)

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "RMSprop",
    "StalenessConfig",
    "AheadOfServerError",
    "DivergedError",
    "NotInitializedError",
    "ParameterServer",
    "ParameterServicer",
    "ParameterStore",
    "PushResult",
    "RestoreError",
    "StoreState",
    "ServerOptimizer",
    "make_optimizer",
]
