"""The server optimizers match keras.optimizers on the same gradient sequence."""

import keras
import numpy as np
import pytest

from gasgd_tf.server.optimizers import SGD, make_optimizer


@pytest.mark.parametrize(
    "hparams",
    [
        dict(learning_rate=0.1),
        dict(learning_rate=0.05, momentum=0.9),
        dict(learning_rate=0.05, momentum=0.9, nesterov=True),
        dict(learning_rate=0.02, momentum=0.5, weight_decay=0.01),
        dict(learning_rate=0.3, weight_decay=0.1),
    ],
)
def test_sgd_matches_keras(hparams):
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (5,), (3, 3, 2, 4)]
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    variables = [keras.Variable(v) for v in init]
    keras_opt = keras.optimizers.SGD(**hparams)

    server_opt = SGD(**hparams)
    params = np.concatenate([v.ravel() for v in init])
    slots = server_opt.init_slots(params.size)

    for _ in range(25):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        keras_opt.apply_gradients(zip(grads, variables))
        server_opt.apply(params, np.concatenate([g.ravel() for g in grads]), slots)

    expected = np.concatenate([np.asarray(v).ravel() for v in variables])
    np.testing.assert_allclose(params, expected, rtol=1e-6, atol=1e-7)


def test_make_optimizer_rejects_unknown_names_and_values():
    assert make_optimizer("sgd", learning_rate=0.1, momentum=0.9).get_config()["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown server optimizer 'adamw'"):
        make_optimizer("adamw")
    with pytest.raises(ValueError, match="bad hyperparameters"):
        make_optimizer("sgd", beta=0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        make_optimizer("sgd", momentum=1.0)
