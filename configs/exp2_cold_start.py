"""Experiment 2: cold start with 1, 2, 4 and 8 clients, n_sync = 1 (the paper's Figure 2).

The paper trained its ImageNet network from random weights with more and
more clients and found that more clients learn more slowly at first (their
stale gradients fight over a fresh network) and faster later. Here: the
offline digits with random shifts (gasgd_tf/experiments/settings.py), 800
steps per client, every cell from the same random initialization.

Command:   python -m gasgd_tf.experiments.run --experiment=exp2
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp2 --config.smoke=True
Output:    runs/exp2/{clients*_nsync1/, summary.md, summary.csv, plots/*.png}
Expected:  see EXPERIMENTS.md, "Experiment 2" (measured here).
Runtime:   about 5 minutes on 2 CPU cores (the 8-client cell is the longest).
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    config.name = "exp2"
    config.sweep.clients = (1, 2, 4, 8)
    config.sweep.n_sync = (1,)
    return config
