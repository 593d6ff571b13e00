"""The A-SGD worker and evaluator against in-process parameter servers."""

import ml_collections
import numpy as np
import pytest

from gasgd_tf import config_base, evaluation, progress, worker
from gasgd_tf.client import ParameterClient
from gasgd_tf.data import pipeline
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.summaries import MetricWriter


def small_config(data_dir, **overrides) -> ml_collections.ConfigDict:
    config = config_base.get_base_config()
    config.data.data_dir = data_dir
    config.num_workers = 1
    config.num_steps = 7
    config.batch_size = 16
    config.worker.log_every_steps = 3
    config.worker.cpu_threads = 1
    config.lock()  # A misspelt override must fail, not add a field.
    config.update_from_flattened_dict(overrides)
    return config_base.finalize(config)


def test_push_and_fetch_follow_n_push_and_n_fetch(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, n_push=2, n_fetch=3)
    result = worker.train(config, 0, server.address, str(tmp_path))

    # Pushes at steps 2, 4, 6 and the last step 7; fetches at join, 3 and 6.
    assert (result.pushes, result.fetches) == (4, 2)
    status = store.status()
    (record,) = status.clients
    assert (record.client_id, record.pushes, record.fetches) == ("worker_0", 4, 3)
    assert (record.last_step, record.active) == (7, False)
    assert store.version == 4 == result.final_version
    assert progress.read_json(progress.progress_path(str(tmp_path), "worker_0"))["done"]


def test_server_parameters_move_by_the_pushed_gradients(serve, digits_data_dir, tmp_path):
    # With n_fetch larger than the run, the worker never refreshes: the server's
    # parameters must equal the initial ones minus lr times every gradient pushed.
    store = ParameterStore(SGD(learning_rate=0.1))
    server = serve(store)
    pushed = []
    original_push = ParameterClient.push

    def recording_push(self, grad, base_version, client_step=0, **kwargs):
        pushed.append(grad.copy())
        return original_push(self, grad, base_version, client_step, **kwargs)

    config = small_config(digits_data_dir, n_push=1, n_fetch=100, num_steps=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ParameterClient, "push", recording_push)
        model = worker.build(config)
        init = worker.VariableSync(model.trainable_variables).read()
        worker.train(config, 0, server.address, str(tmp_path))
    assert len(pushed) == 5
    expected = init - np.float32(0.1) * np.sum(pushed, axis=0)
    np.testing.assert_allclose(store.snapshot().flat, expected, rtol=1e-5, atol=1e-6)


def test_second_worker_fetches_the_first_workers_weights(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, num_steps=3)
    worker.train(config, 0, server.address, str(tmp_path))
    trained = store.snapshot().flat.copy()
    # A different seed gives different initial weights; the server keeps its own.
    other = small_config(digits_data_dir, num_steps=1, seed=5)
    model = worker.build(other)
    sync = worker.VariableSync(model.trainable_variables)
    with ParameterClient(server.address, "worker_1") as client:
        version, last_step = worker.join(client, sync, timeout_secs=10)
    assert (version, last_step) == (3, 0)  # worker_1 is new: nothing to resume.
    np.testing.assert_array_equal(sync.read(), trained)


def test_evaluator_matches_keras_evaluate(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, num_steps=20)
    worker.train(config, 0, server.address, str(tmp_path))

    result = evaluation.run(config, server.address, str(tmp_path))
    assert result.version == store.version and result.examples == 359

    import keras

    from gasgd_tf.data import pipeline

    model = worker.build(config)
    worker.VariableSync(model.trainable_variables).assign(store.snapshot().flat)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    loss, accuracy = model.evaluate(pipeline.eval_dataset(config.data, 512), verbose=0)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-6)
    assert result.loss == pytest.approx(loss, rel=1e-4)
    final = progress.read_json(progress.progress_path(str(tmp_path), "eval"))
    assert final["final"] and final["version"] == store.version


def test_evaluator_finishes_when_the_final_model_cannot_be_saved(
    serve, digits_data_dir, tmp_path, capsys
):
    # A directory where the model file goes makes Keras' save raise an
    # OSError (IsADirectoryError), as a full disk or a read-only workdir
    # would; the evaluation's results must still be recorded.
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, num_steps=3)
    worker.train(config, 0, server.address, str(tmp_path))
    blocked = tmp_path / evaluation.MODEL_FILE
    blocked.mkdir()

    result = evaluation.run(config, server.address, str(tmp_path))
    assert result.version == store.version == 3
    final = progress.read_json(progress.progress_path(str(tmp_path), "eval"))
    assert final["final"] and final["version"] == 3
    assert "model" not in final  # The summary must not point at a model that is not there.
    err = capsys.readouterr().err
    assert f"could not save the final model to {blocked}" in err
    assert "IsADirectoryError" in err


def test_save_final_model_warns_and_removes_a_partial_file(tmp_path, capsys, monkeypatch):
    import errno

    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / evaluation.MODEL_FILE
    assert evaluation.save_final_model(model, str(path), 7)
    assert keras.models.load_model(path).count_params() == model.count_params()
    assert f"saved the final model (version 7) to {path}" in capsys.readouterr().out

    def disk_full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04")  # The start of a zip, then the disk is full.
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(model), "save", disk_full)
    assert not evaluation.save_final_model(model, str(path), 8)
    assert not path.exists()  # Neither the partial file nor the earlier one.
    err = capsys.readouterr().err
    assert str(path) in err and "No space left on device" in err


def test_nan_gradient_is_refused_and_named(serve, digits_data_dir, tmp_path):
    from gasgd_tf.client import RequestRejectedError

    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    # A learning rate this large makes the local replica diverge to NaN.
    config = small_config(
        digits_data_dir, num_steps=30, n_fetch=1000, **{"worker.learning_rate": 1e30}
    )
    with pytest.raises(RequestRejectedError, match="INVALID_ARGUMENT.*non-finite"):
        worker.train(config, 0, server.address, str(tmp_path))
    assert store.status().pushes_rejected == 1
    assert np.isfinite(store.snapshot().flat).all()


def test_the_workers_metric_writer_writes_curves_tensorboard_reads_back(tmp_path):
    # The worker writes through the same TF-free writer as the server (with
    # TensorFlow imported in the same process): TensorBoard must read its curves.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricWriter(tmp_path) as writer:
        writer.scalar("train/loss", 1.5, 1)
        writer.scalars({"train/loss": 0.25, "train/accuracy": 0.75}, 2)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.5), (2, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("train/accuracy")] == [(2, 0.75)]


def test_evaluator_waits_for_exactly_its_workers():
    from gasgd_tf.proto import parameter_service_pb2 as pb

    def status(*left, active=()):
        clients = [pb.ClientStatus(client_id=c, active=False) for c in left]
        clients += [pb.ClientStatus(client_id=c, active=True) for c in active]
        return pb.StatusResponse(clients=clients)

    # A monitor named like a worker must not count as one of the workers.
    assert not evaluation._workers_finished(
        status("worker_monitor", "worker_0", active=["worker_1"]), 2
    )
    assert not evaluation._workers_finished(status("worker_0", "worker_2"), 2)
    assert evaluation._workers_finished(status("worker_0", "worker_1", "eval"), 2)


def test_warm_up_leaves_weights_and_optimizer_state_untouched(digits_data_dir):
    import keras

    from gasgd_tf.data import pipeline

    config = small_config(digits_data_dir, **{"worker.momentum": 0.9})
    model = worker.build(config)
    optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    step = worker.TrainStep(model, optimizer)
    before = [v.numpy().copy() for v in [*model.variables, *optimizer.variables]]
    images, labels = next(iter(pipeline.train_dataset(config.data, 16, seed=0)))
    step.warm_up(images, labels)
    after = [v.numpy() for v in [*model.variables, *optimizer.variables]]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert not np.any(step.take_gradient())  # Nothing left to push.
    # A real step does move the momentum slots: the comparison above can fail.
    step(images, labels)
    assert any(np.any(v.numpy()) for v in optimizer.momentums)


def test_multi_crop_evaluation_averages_probabilities_over_crops():
    import keras
    import tensorflow as tf

    # Logits = the crop's two pixels: class 1 wins where pixel 1 > pixel 0.
    inputs = keras.Input((1, 2, 1))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    crops = np.array(
        [
            # Centre says class 0 (barely); the other crops say class 1 firmly.
            [[[[0.6], [0.5]]], [[[0.0], [5.0]]], [[[0.0], [5.0]]]],
            # Centre and the rest agree on class 0.
            [[[[5.0], [0.0]]], [[[5.0], [0.0]]], [[[4.0], [0.0]]]],
        ],
        np.float32,
    )
    labels = np.array([1, 0], np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((crops, labels)).batch(2)
    accuracy, loss, count, multi = evaluation.Evaluator(model, dataset, multi_crop=True)()
    assert (accuracy, multi, count) == (0.5, 1.0, 2)
    # The loss is the centre crop's.
    centre = crops[:, 0].reshape(2, 2)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, centre)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    single = evaluation.Evaluator(model, dataset.map(lambda x, y: (x[:, 0], y)))()
    assert single[0] == 0.5 and single[3] is None

    # Probabilities, not logits: mean logits [2, 3.33] would pick class 1;
    # mean probabilities (0.67 against 0.33) pick class 0.
    crops = np.array([[[[[0.0], [10.0]]], [[[3.0], [0.0]]], [[[3.0], [0.0]]]]], np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((crops, np.array([0]))).batch(1)
    assert evaluation.Evaluator(model, dataset, multi_crop=True)()[3] == 1.0


def test_warm_start_weights_must_match_the_model(tmp_path, capsys):
    from gasgd_tf import checkpoints
    from gasgd_tf.tensors import TensorSpec

    specs = (TensorSpec("a", (2,)), TensorSpec("b", (3,)))
    path = checkpoints.save(str(tmp_path), specs, np.arange(5, dtype=np.float32), 7)
    flat = worker.warm_start_weights(str(tmp_path), specs, "worker_0")
    np.testing.assert_array_equal(flat, np.arange(5))
    assert f"warm start from {path} (saved at version 7)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'b' has shape"):
        worker.warm_start_weights(path, (specs[0], TensorSpec("b", (4,))), "worker_0")


def test_overlap_keeps_the_push_and_fetch_schedule(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, n_push=2, n_fetch=3, **{"worker.overlap": True})
    assert config.worker.overlap
    result = worker.train(config, 0, server.address, str(tmp_path))

    # As without overlap: pushes at steps 2, 4, 6 and 7; fetches at join, 3 and 6.
    assert (result.pushes, result.fetches) == (4, 2)
    (record,) = store.status().clients
    assert (record.pushes, record.fetches, record.last_step) == (4, 3, 7)
    assert store.version == 4 == result.final_version  # The last push landed before Leave.


def test_overlap_raises_a_background_push_error_in_the_worker(serve, digits_data_dir, tmp_path):
    from gasgd_tf.client import RequestRejectedError

    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    # As in the NaN test above: the local replica diverges, its gradient is refused.
    config = small_config(
        digits_data_dir,
        num_steps=30,
        n_fetch=1000,
        **{"worker.learning_rate": 1e30, "worker.overlap": True},
    )
    with pytest.raises(RequestRejectedError, match="INVALID_ARGUMENT.*non-finite"):
        worker.train(config, 0, server.address, str(tmp_path))
    assert np.isfinite(store.snapshot().flat).all()


def test_overlap_pushes_in_the_background_with_their_true_base(
    serve, digits_data_dir, tmp_path, monkeypatch
):
    import threading
    import time

    threads = []
    original = ParameterClient.push

    def slow_push(self, grad, base_version, client_step=0, **kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # Slower than a step: the fetched weights arrive a step late.
        return original(self, grad, base_version, client_step=client_step, **kwargs)

    monkeypatch.setattr(ParameterClient, "push", slow_push)
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = small_config(digits_data_dir, num_steps=8, **{"worker.overlap": True})
    result = worker.train(config, 0, server.address, str(tmp_path))

    assert threads == ["gasgd-sync"] * 8  # Every push left the training thread.
    assert store.version == 8 == result.final_version  # The last one landed before Leave.
    # One worker: a push is at most one version behind the weights it was
    # computed from. Naming the base at the push instead of at the first step
    # of its window would claim one version older (staleness 2).
    assert store.status().staleness.max <= 1


def test_worker_without_a_server_trains_locally(digits_data_dir, tmp_path):
    # address=None: the benchmarks' no-communication baseline runs the same loop.
    config = small_config(digits_data_dir, num_steps=6)
    result = worker.train(config, 0, None, str(tmp_path))
    assert (result.steps, result.pushes, result.fetches, result.final_version) == (6, 0, 0, 0)
    assert np.isfinite(result.loss) and result.images_per_sec > 0


def test_returned_gradient_equals_the_accumulated_one(digits_data_dir):
    # n_push = 1 takes each step's gradient straight from the step; it must be
    # the gradient the accumulator would have held.
    import keras

    config = small_config(digits_data_dir)
    images, labels = next(iter(pipeline.train_dataset(config.data, 16, seed=0)))
    grads = []
    for direct in (False, True):
        model = worker.build(config)
        step = worker.TrainStep(model, keras.optimizers.SGD(0.05), return_gradient=direct)
        returned = step(images, labels)
        grads.append(returned if direct else step.take_gradient())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-7)
