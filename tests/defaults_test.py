"""Every default is written once, in config_base: library code that takes no config agrees."""

import inspect

import pytest

from gasgd_tf import config_base, sharding, wire
from gasgd_tf.client import ParameterClient
from gasgd_tf.server import ParameterServer, ParameterServicer, server_config, store
from gasgd_tf.server.optimizers import OPTIMIZERS, POLICY_OPTIMIZERS


def _default(function, name):
    return inspect.signature(function).parameters[name].default


DEFAULTS = config_base.defaults()


@pytest.mark.parametrize(
    "function, argument, field",
    [
        (ParameterClient.__init__, "timeout_secs", "client.timeout_secs"),
        (ParameterClient.__init__, "retry_secs", "client.retry_secs"),
        (ParameterClient.__init__, "chunk_bytes", "client.chunk_bytes"),
        (ParameterClient.__init__, "push_dtype", "client.push_dtype"),
        (ParameterClient.__init__, "fetch_dtype", "client.fetch_dtype"),
        (ParameterServer.__init__, "max_workers", "ps.rpc_threads"),
        (ParameterServer.__init__, "max_concurrent_pushes", "ps.max_concurrent_pushes"),
        (ParameterServer.__init__, "max_concurrent_fetches", "ps.max_concurrent_fetches"),
        (ParameterServicer.__init__, "max_concurrent_pushes", "ps.max_concurrent_pushes"),
        (ParameterServicer.__init__, "max_concurrent_fetches", "ps.max_concurrent_fetches"),
        (store.ParameterStore.__init__, "max_parameter_bytes", "ps.max_parameter_bytes"),
        (store.ParameterStore.__init__, "max_clients", "ps.max_clients"),
    ],
)
def test_library_defaults_are_the_configs(function, argument, field):
    section, name = field.split(".")
    assert _default(function, argument) == DEFAULTS[section][name]


def test_module_constants_are_the_configs():
    assert wire.DEFAULT_CHUNK_BYTES == DEFAULTS.client.chunk_bytes
    assert sharding.DEFAULT_SPLIT_BYTES == DEFAULTS.ps.shard_split_bytes


def test_the_keras_callback_takes_the_command_lines_defaults():
    from gasgd_tf.keras_api import AsyncSGD

    for argument in ("connect_timeout_secs", "timeout_secs", "retry_secs", "heartbeat_secs"):
        assert _default(AsyncSGD.__init__, argument) == DEFAULTS.client[argument]
    assert _default(AsyncSGD.__init__, "shard_split_bytes") == DEFAULTS.ps.shard_split_bytes
    sync = AsyncSGD(verbose=False)  # A local server: the command-line server's step size.
    try:
        assert sync.server.store.optimizer.learning_rate == DEFAULTS.ps.learning_rate
    finally:
        sync.close()


def test_every_optimizers_hyperparameters_are_config_fields():
    # One registry: the config fields each optimizer reads come from its signature.
    assert set(server_config.OPTIMIZER_HPARAMS) == set(OPTIMIZERS) | set(POLICY_OPTIMIZERS)
    for name, fields in server_config.OPTIMIZER_HPARAMS.items():
        assert fields and all(f in DEFAULTS.ps for f in fields), name
