"""A single worker whose final parameters seed warm-start runs (the paper's single-GPU model).

Trains one worker for 300 steps on the experiments' setting; its parameter
server writes runs/pretrain/checkpoints/params-<version>.npz when it stops.

Command:   python -m gasgd_tf.main --config=configs/pretrain.py
Then:      python -m gasgd_tf.main --config=configs/default.py \\
               --config.warm_start=runs/pretrain
Runtime:   about 15 s on 2 CPU cores.
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    del config["sweep"]
    del config["smoke"]
    config.name = "pretrain"
    config.num_workers = 1
    config.num_steps = 300
    return config
