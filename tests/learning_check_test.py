"""The not-learning warning: the rule (gasgd_tf.learning_check) and the evaluator's use of it."""

import math

import pytest

from gasgd_tf import evaluation, learning_check, progress, worker
from gasgd_tf.learning_check import Evaluation, RunSettings
from gasgd_tf.server import SGD, ParameterStore

CHANCE = math.log(10)
DIGITS = RunSettings(num_classes=10, num_steps=400)


@pytest.mark.parametrize(
    "name, start, evaluation_, fires, says",
    [
        ("learning run", 2.30, Evaluation(300, 0.35, 0.90, 150), False, ""),
        ("learning, slowly", 2.30, Evaluation(300, 1.90, 0.45, 150), False, ""),
        ("flat past a quarter", 2.2990, Evaluation(300, 2.2990, 0.30, 101), True, "its start"),
        ("worse than the start", 2.10, Evaluation(300, 2.20, 0.30, 300), True, "its start"),
        ("flat, before a quarter", 2.2990, Evaluation(150, 2.2990, 0.10, 100), False, ""),
        ("at chance from the start", None, Evaluation(900, CHANCE, 0.11, 400), True, "chance"),
        ("above chance", 2.28, Evaluation(900, 2.40, 0.30, 200), True, "chance (2.3026)"),
        ("accuracy at chance", 2.30, Evaluation(900, 2.25, 0.115, 200), True, "accuracy 0.1150"),
        ("diverged", 2.30, Evaluation(900, math.nan, 0.098, 200), True, "not finite"),
    ],
)
def test_the_rule(name, start, evaluation_, fires, says):
    warning = learning_check.check(DIGITS, start, evaluation_)
    assert (warning is not None) == fires, (name, warning)
    if fires:
        assert says in warning.finding
        assert f"at version {evaluation_.version}" in warning.finding
        assert warning.text.startswith("the run is not learning: test loss ")


def test_a_late_first_evaluation_is_no_start():
    # A resumed run's evaluator first sees a trained model: no start to beat.
    assert learning_check.start_loss(DIGITS, Evaluation(0, 2.30, 0.1, 0)) == 2.30
    assert learning_check.start_loss(DIGITS, Evaluation(5000, 0.08, 0.98, 300)) is None
    assert learning_check.check(DIGITS, None, Evaluation(5001, 0.08, 0.98, 301)) is None


@pytest.mark.parametrize(
    "settings, says",
    [
        (
            RunSettings(10, 2000, n_push=10, ps_learning_rate=0.05, ps_momentum=0.9),
            "ps.learning_rate x n_push (sum of 10 gradients) = 0.05 x 10 = 0.5 with ps.momentum "
            "0.9; lower ps.learning_rate or n_push, or use worker.push=delta",
        ),
        (
            RunSettings(10, 500, ps_learning_rate=3.0),
            "the server's step is too large: ps.learning_rate 3 without momentum; lower",
        ),
        (
            RunSettings(10, 500, n_push=10, ps_optimizer="adam", ps_learning_rate=0.1),
            "ps.learning_rate 0.1 with ps.optimizer adam",
        ),
        (
            RunSettings(10, 500, 8, "delta", 0.1, "sgd", 0.7, 0.9),
            "each pushed delta (8 local steps at worker.learning_rate 0.1) is too large: "
            "ps.learning_rate 0.7 with ps.momentum 0.9",
        ),
        (RunSettings(10, 500, ps_learning_rate=1e-9), "the parameters hardly move"),
    ],
)
def test_the_cause_names_the_config_values(settings, says):
    assert says in learning_check.likely_cause(settings)


# --- The evaluator, against an in-process server ---------------------------------------


def _config(data_dir, **overrides):
    from worker_test import small_config

    return small_config(data_dir, **{"eval.save_model": False, **overrides})


def test_the_evaluator_warns_once_for_a_run_that_does_not_move(
    serve, digits_data_dir, tmp_path, capsys
):
    # A server step of 1e-12 leaves the float32 parameters as they were: the
    # loss past a quarter equals the first evaluation's, deterministically.
    store = ParameterStore(SGD(learning_rate=1e-12))
    server = serve(store)
    config = _config(digits_data_dir, num_steps=8, **{"ps.learning_rate": 1e-12})
    initializer = worker.build(config)
    from gasgd_tf.client import ParameterClient

    with ParameterClient(server.address, "init") as client:  # Version 0 before any worker.
        worker.join(client, worker.VariableSync(initializer.trainable_variables), 10)
    run = evaluation._EvalRun(config, server.address, str(tmp_path))
    run.session.join_read_only(10, config.client.heartbeat_secs)
    first = run.evaluate_now(0.0)
    assert first.version == 0 and "warning" not in _progress(tmp_path)
    worker.train(config, 0, server.address, str(tmp_path))
    for _ in range(2):  # Two evaluations past a quarter: one warning in the log.
        result = run.evaluate_now(8.0)
    run.finish(result)

    err = capsys.readouterr().err
    assert err.count("eval: WARNING: the run is not learning") == 1, err
    assert f"is at or above its start ({first.loss:.4f})" in err
    assert "Likely cause: the parameters hardly move: ps.learning_rate 1e-12" in err
    final = _progress(tmp_path)
    assert final["final"] and final["warning"].startswith("the run is not learning")
    assert final["warning_short"] in final["warning"]


def test_the_evaluator_does_not_warn_for_a_run_that_learns(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = _config(digits_data_dir, num_steps=60, batch_size=32)
    worker.train(config, 0, server.address, str(tmp_path))
    result = evaluation.run(config, server.address, str(tmp_path))
    final = _progress(tmp_path)
    assert final["final"] and "warning" not in final, (result, final.get("warning"))


def test_evaluation_run_warns_for_a_run_that_diverged(serve, digits_data_dir, tmp_path, capsys):
    store = ParameterStore(SGD(learning_rate=1e4))  # Overshoots at once.
    server = serve(store)
    config = _config(digits_data_dir, num_steps=8, **{"ps.learning_rate": 1e4})
    worker.train(config, 0, server.address, str(tmp_path))
    evaluation.run(config, server.address, str(tmp_path))
    final = _progress(tmp_path)
    assert "the run is not learning" in final.get("warning", ""), final
    assert "ps.learning_rate 10000 without momentum" in final["warning"]
    assert capsys.readouterr().err.count("eval: WARNING: the run is not learning") == 1


def _progress(workdir):
    return progress.read_json(progress.progress_path(str(workdir), evaluation.CLIENT_ID))
