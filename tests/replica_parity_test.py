"""The command-line worker and the Keras callback speak the same protocol.

Both are adapters over one ReplicaSession: over the same steps they must
make the same calls, in the same order, with the same steps and base
versions.
"""

import keras
import pytest
from worker_test import small_config

import gasgd_tf
from gasgd_tf import worker
from gasgd_tf.client import ParameterClient
from gasgd_tf.data import pipeline
from gasgd_tf.server import SGD, ParameterStore

pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")


def record_calls(monkeypatch) -> list:
    calls = []
    push, fetch = ParameterClient.push, ParameterClient.fetch

    def recording_push(client, grad, base_version, client_step=0, **kwargs):
        calls.append(("push", client_step, base_version))
        return push(client, grad, base_version, client_step, **kwargs)

    def recording_fetch(client, *args, **kwargs):
        result = fetch(client, *args, **kwargs)
        calls.append(("fetch", result[0]))
        return result

    monkeypatch.setattr(ParameterClient, "push", recording_push)
    monkeypatch.setattr(ParameterClient, "fetch", recording_fetch)
    return calls


@pytest.mark.parametrize("overlap", [False, True])
def test_the_cli_worker_and_the_keras_callback_push_and_fetch_alike(
    serve, digits_data_dir, tmp_path, monkeypatch, overlap
):
    config = small_config(
        digits_data_dir, n_push=2, n_fetch=3, num_steps=7, **{"worker.overlap": overlap}
    )
    calls = record_calls(monkeypatch)
    cli_store = ParameterStore(SGD(learning_rate=0.05))
    worker.train(config, 0, serve(cli_store).address, str(tmp_path / "cli"))
    cli_calls, calls[:] = list(calls), []

    keras_store = ParameterStore(SGD(learning_rate=0.05))
    model = worker.build(config)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = pipeline.train_dataset(config.data, config.batch_size, seed=0).take(7)
    sync = gasgd_tf.AsyncSGD(
        serve(keras_store).address, n_push=2, n_fetch=3, overlap=overlap, verbose=False
    )
    model.fit(data, epochs=1, steps_per_epoch=7, callbacks=[sync], verbose=0)

    # Join; pushes at 2, 4, 6 and the last step 7; fetches at 3 and 6.
    assert [c[:2] for c in cli_calls if c[0] == "push"] == [("push", s) for s in (2, 4, 6, 7)]
    assert sum(c[0] == "fetch" for c in cli_calls) == 3
    assert calls == cli_calls
    assert (sync.pushes, sync.fetches) == (4, 2)
    assert keras_store.version == cli_store.version == 4
