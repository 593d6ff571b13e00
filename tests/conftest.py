"""Shared fixtures: in-process parameter servers and an offline dataset folder."""

import os
import pathlib
import subprocess
import sys

import pytest

# Quieter TensorFlow in tests that import it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # For `configs.*` imports.


def experiment_command(*flags: str) -> list[str]:
    """The command line of the sweep runner, ``python -m gasgd_tf.experiments.run``."""
    return [sys.executable, "-m", "gasgd_tf.experiments.run", *flags]


def run_experiment(*flags: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the sweep runner from the repository root and waits for it."""
    return subprocess.run(
        experiment_command(*flags), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def serve():
    """Starts in-process ParameterServers on free loopback ports; stops them after the test.

    Usage: ``server = serve(store)`` with a ``ParameterStore``.
    """
    from gasgd_tf.server import ParameterServer

    servers = []

    def start(store, **kwargs):
        server = ParameterServer(store, "127.0.0.1:0", **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=None)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A tfds data_dir with sklearn_digits prepared once per test session (offline)."""
    import ml_collections

    from gasgd_tf.data import pipeline

    data_dir = tmp_path_factory.mktemp("tfds")
    pipeline.prepare(
        ml_collections.ConfigDict({"name": "sklearn_digits", "data_dir": str(data_dir)})
    )
    return str(data_dir)


def assert_refused(overrides: dict, message: str) -> None:
    """The base config with ``overrides`` fails ``finalize`` with an error matching ``message``."""
    from gasgd_tf import config_base

    config = config_base.get_base_config()
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        config_base.finalize(config)
