"""The evaluator role: fetches the server's parameters and evaluates the whole test split.

It evaluates whenever the version has moved and ``eval.every_secs`` have
passed, logs ``eval/accuracy`` and ``eval/loss`` against the server version
(TensorBoard also records wall-clock time), and once every worker has left,
evaluates the final parameters and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time

import keras
import ml_collections
import tensorflow as tf

from gasgd_tf import config_base, devices, layout, learning_check, progress, worker
from gasgd_tf.data import pipeline
from gasgd_tf.keras_sync import VariableSync
from gasgd_tf.replica import ReplicaSession, SyncSchedule
from gasgd_tf.summaries import MetricWriter

CLIENT_ID = layout.EVAL
MODEL_FILE = layout.FINAL_MODEL_FILE


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """One evaluation of the server's parameters.

    Attributes:
      version: The server version evaluated.
      accuracy: Top-1 accuracy on the centre crop (the whole image without augmentation).
      loss: Mean cross-entropy on the centre crop.
      examples: Number of test examples.
      accuracy_multi_crop: Top-1 accuracy of the softmax averaged over the
        centre, four corners and mirrors (``eval.multi_crop``), else None.
      steps_per_client: Mean training step of the workers when the
        parameters were fetched (the paper's x-axis on dedicated GPUs).
    """

    version: int
    accuracy: float
    loss: float
    examples: int
    accuracy_multi_crop: float | None = None
    steps_per_client: float = 0.0


class Evaluator:
    """Evaluates a model's current weights on a dataset with one compiled step per batch.

    Args:
      model: The model whose weights are evaluated.
      dataset: (images, labels) batches; with ``multi_crop``, images are
        [batch, crops, h, w, c] with the centre crop first.
      multi_crop: Also score the softmax averaged over the crops.
    """

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, multi_crop: bool = False):
        self.model = model
        self.dataset = dataset
        self.multi_crop = multi_crop
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

        def hits(logits, labels):
            correct = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
            return tf.reduce_sum(tf.cast(correct, tf.float32))

        @tf.function
        def batch_sums(images, labels):
            if multi_crop:
                shape = tf.shape(images)
                crops = tf.reshape(images, tf.concat([[-1], shape[2:]], axis=0))
                logits = tf.reshape(model(crops, training=False), [shape[0], shape[1], -1])
                centre = logits[:, 0]
                # Average probabilities, not logits, as Krizhevsky et al. did.
                multi = hits(tf.reduce_mean(tf.nn.softmax(logits), axis=1), labels)
            else:
                centre = model(images, training=False)
                multi = tf.constant(0.0)
            return loss_fn(labels, centre), hits(centre, labels), multi

        self._batch_sums = batch_sums

    def __call__(self) -> tuple[float, float, int, float | None]:
        """(accuracy, mean loss, examples, multi-crop accuracy or None) over the dataset."""
        loss = correct = correct_multi = 0.0
        count = 0
        for images, labels in self.dataset:
            batch_loss, batch_correct, batch_multi = self._batch_sums(images, labels)
            loss += float(batch_loss)
            correct += float(batch_correct)
            correct_multi += float(batch_multi)
            count += int(labels.shape[0])
        multi = correct_multi / count if self.multi_crop else None
        return correct / count, loss / count, count, multi


def _workers_finished(status, num_workers: int) -> bool:
    """Whether worker_0 ... worker_{num_workers - 1} have all called Leave."""
    left = {c.client_id for c in status.clients if not c.active}
    return all(name in left for name in layout.workers(num_workers))


def _steps_per_client(status, num_workers: int) -> float:
    """The workers' mean last reported step (0 before any push)."""
    names = set(layout.workers(num_workers))
    steps = [c.last_step for c in status.clients if c.client_id in names]
    return sum(steps) / num_workers if steps else 0.0


def save_final_model(model: keras.Model, path: str, version: int) -> bool:
    """Saves ``model`` to ``path``; warns instead of raising when it cannot be written.

    The file is a by-product: the final evaluation, the summary and the
    server's checkpoints do not depend on it, so a full disk or an
    unwritable workdir costs this file, not the run.

    Args:
      model: The evaluator's replica, holding the server's final parameters.
      path: Where the ``.keras`` file goes.
      version: The server version the parameters are from (for the log).

    Returns:
      Whether the model was saved.
    """
    try:
        model.save(path)
    except OSError as e:
        # A partly written file must not pass for the final model.
        with contextlib.suppress(OSError):
            os.remove(path)
        print(
            f"eval: WARNING: could not save the final model to {path}: "
            f"{type(e).__name__}: {e}; the run goes on without it",
            file=sys.stderr,
            flush=True,
        )
        return False
    print(f"eval: saved the final model (version {version}) to {path}", flush=True)
    return True


class _EvalRun:
    """The evaluator's pieces: its replica, its read-only session and its sinks."""

    def __init__(self, config: ml_collections.ConfigDict, address: str, workdir: str):
        devices.configure(0, config.worker.cpu_threads)
        self.config = config
        self.workdir = workdir
        self.model = worker.build(config)
        multi_crop = config.eval.multi_crop
        dataset = pipeline.eval_dataset(config.data, config.eval.batch_size, multi_crop=multi_crop)
        self.evaluate = Evaluator(self.model, dataset, multi_crop=multi_crop)
        with MetricWriter(layout.tensorboard_dir(workdir)) as hparams_writer:
            hparams_writer.hparams(config_base.hparams(config), trial_id=os.path.basename(workdir))
        self.writer = MetricWriter(layout.tensorboard_dir(workdir, CLIENT_ID))
        self.progress_file = layout.progress_path(workdir, CLIENT_ID)
        self.session = ReplicaSession(
            worker.connect(config, address, CLIENT_ID),
            VariableSync(self.model.trainable_variables),
            SyncSchedule(1, 1),  # Unused: a read-only replica fetches when it evaluates.
            model_name=self.model.name,
        )
        num_classes = pipeline.dataset_info(config.data).num_classes
        self.learning = learning_check.RunSettings.from_config(config, num_classes)
        self.start_loss: float | None = None
        self.evaluations = 0
        self.warning: learning_check.NotLearning | None = None
        self.warning_fields: dict = {}  # The latest evaluation's, for the final progress file.

    def check_learning(self, result: EvalResult) -> dict:
        """Applies the not-learning rule to ``result``; says so once when it first fires.

        Returns:
          The progress file's warning fields ({} while the run learns).
        """
        seen = learning_check.Evaluation(
            result.version, result.loss, result.accuracy, result.steps_per_client
        )
        if self.evaluations == 0:
            self.start_loss = learning_check.start_loss(self.learning, seen)
        self.evaluations += 1
        warning = learning_check.check(self.learning, self.start_loss, seen)
        if warning is not None and self.warning is None:
            print(f"eval: WARNING: {warning.text}", file=sys.stderr, flush=True)
        elif warning is None and self.warning is not None:
            # The warning stands for the latest evaluation only: a recovered run loses it.
            print(f"eval: the run learns after all: test loss {result.loss:.4f}", flush=True)
        self.warning = warning
        if warning is None:
            return {}
        return {"warning": warning.text, "warning_short": warning.finding}

    def evaluate_now(self, steps: float) -> EvalResult:
        """Fetches the server's parameters, evaluates them, and reports the result."""
        version = self.session.fetch(read_only=True)  # One number for a sharded server too.
        accuracy, loss, count, multi = self.evaluate()
        result = EvalResult(version, accuracy, loss, count, multi, steps)
        scalars = {"eval/accuracy": accuracy, "eval/loss": loss, "eval/steps_per_client": steps}
        if multi is not None:
            scalars["eval/accuracy_multi_crop"] = multi
        self.writer.scalars(scalars, version)
        more = f", multi-crop accuracy {multi:.4f}" if multi is not None else ""
        line = f"eval: version {version}: accuracy {accuracy:.4f}, loss {loss:.4f}{more}"
        print(line, flush=True)
        self.warning_fields = self.check_learning(result)  # Logged below the numbers it reads.
        progress.write_json(
            self.progress_file,
            {**dataclasses.asdict(result), **self.warning_fields, "final": False},
        )
        return result

    def finish(self, result: EvalResult) -> None:
        """Saves the final model (if asked), writes the final progress file, closes."""
        final = {**dataclasses.asdict(result), **self.warning_fields, "final": True}
        if self.config.eval.save_model:
            # The evaluator's replica holds the server's final parameters: a
            # Keras model that loads without gasgd_tf's server (keras.models.load_model).
            path = layout.final_model_path(self.workdir)
            if save_final_model(self.model, path, result.version):
                final["model"] = path  # Only a file that is there: the summary names it.
        progress.write_json(self.progress_file, final)
        self.writer.close()
        self.session.close()
        print(f"eval: final accuracy {result.accuracy:.4f} at version {result.version}", flush=True)


def run(config: ml_collections.ConfigDict, address: str, workdir: str) -> EvalResult:
    """The ``eval`` role: evaluates until all ``config.num_workers`` workers have left.

    Raises:
      ServerUnavailableError: The server is unreachable or never initialized.
    """
    run = _EvalRun(config, address, workdir)
    client = run.session.client
    run.session.join_read_only(
        config.client.connect_timeout_secs,
        config.client.heartbeat_secs,
        init_timeout_secs=config.eval.init_timeout_secs,
    )
    result = None
    last_eval = float("-inf")
    while True:
        status = client.status(layout.workers(config.num_workers))  # Listed whatever the cap.
        finished = _workers_finished(status, config.num_workers)
        due = time.monotonic() - last_eval >= config.eval.every_secs
        if (result is None or status.version != result.version) and (due or finished):
            result = run.evaluate_now(_steps_per_client(status, config.num_workers))
            last_eval = time.monotonic()
        if finished and result is not None and result.version == status.version:
            break
        time.sleep(min(0.5, config.eval.every_secs))
    run.finish(result)
    return result
