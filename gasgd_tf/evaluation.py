"""The evaluator role: fetches the server's parameters and evaluates the whole test split.

It evaluates whenever the version has moved and ``eval.every_secs`` have
passed, logs ``eval/accuracy`` and ``eval/loss`` against the server version
(TensorBoard also records wall-clock time), and once every worker has left,
evaluates the final parameters and exits.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import ml_collections
import tensorflow as tf

from gasgd_tf import devices, progress, worker
from gasgd_tf.client import ServerUnavailableError
from gasgd_tf.data import pipeline
from gasgd_tf.summaries import MetricWriter

CLIENT_ID = "eval"


@dataclasses.dataclass(frozen=True)
class EvalResult:
    version: int
    accuracy: float
    loss: float
    examples: int


class Evaluator:
    """Evaluates a model's current weights on a dataset with one compiled step per batch."""

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset):
        self.model = model
        self.dataset = dataset
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

        @tf.function
        def batch_sums(images, labels):
            logits = model(images, training=False)
            hits = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
            return loss_fn(labels, logits), tf.reduce_sum(tf.cast(hits, tf.float32))

        self._batch_sums = batch_sums

    def __call__(self) -> tuple[float, float, int]:
        """Returns (accuracy, mean loss, number of examples) over the whole dataset."""
        loss = correct = 0.0
        count = 0
        for images, labels in self.dataset:
            batch_loss, batch_correct = self._batch_sums(images, labels)
            loss += float(batch_loss)
            correct += float(batch_correct)
            count += int(labels.shape[0])
        return correct / count, loss / count, count


def _workers_finished(status, num_workers: int) -> bool:
    """Whether worker_0 ... worker_{num_workers - 1} have all called Leave."""
    left = {c.client_id for c in status.clients if not c.active}
    return all(worker.client_id(i) in left for i in range(num_workers))


def run(config: ml_collections.ConfigDict, address: str, workdir: str) -> EvalResult:
    """The ``eval`` role: evaluates until all ``config.num_workers`` workers have left.

    Raises:
      ServerUnavailableError: The server is unreachable or never initialized.
    """
    devices.configure(0, config.worker.cpu_threads)
    model = worker.build(config)
    sync = worker.VariableSync(model.trainable_variables)
    evaluate = Evaluator(model, pipeline.eval_dataset(config.data, config.eval.batch_size))
    writer = MetricWriter(os.path.join(workdir, "tb", "eval"))
    progress_file = progress.progress_path(workdir, CLIENT_ID)
    client = worker.connect(config, address, CLIENT_ID)
    client.wait_for_server(config.client.connect_timeout_secs)
    deadline = time.monotonic() + config.client.connect_timeout_secs
    # With its signature, so that the server refuses a model that differs.
    while not client.register(sync.specs).initialized:
        if time.monotonic() > deadline:
            raise ServerUnavailableError(
                f"parameter server at {address} was not initialized by any worker within "
                f"{config.client.connect_timeout_secs:.0f}s"
            )
        time.sleep(0.2)

    result = None
    last_eval = float("-inf")
    while True:
        status = client.status()
        finished = _workers_finished(status, config.num_workers)
        due = time.monotonic() - last_eval >= config.eval.every_secs
        if (result is None or status.version != result.version) and (due or finished):
            version, _, flat = client.fetch()
            sync.assign(flat)
            accuracy, loss, count = evaluate()
            last_eval = time.monotonic()
            result = EvalResult(version, accuracy, loss, count)
            writer.scalars({"eval/accuracy": accuracy, "eval/loss": loss}, version)
            progress.write_json(progress_file, {**dataclasses.asdict(result), "final": False})
            print(f"eval: version {version}: accuracy {accuracy:.4f}, loss {loss:.4f}", flush=True)
        if finished and result is not None and result.version == status.version:
            break
        time.sleep(min(0.5, config.eval.every_secs))
    progress.write_json(progress_file, {**dataclasses.asdict(result), "final": True})
    writer.close()
    client.close()
    print(f"eval: final accuracy {result.accuracy:.4f} at version {result.version}", flush=True)
    return result
