"""Experiment 2: cold start with 1, 2, 4 and 8 clients, n_sync = 1 (the paper's Figure 2).

The paper trained its ImageNet network from random weights with more and
more clients and found that more clients learn more slowly at first (their
stale gradients fight over a fresh network) and faster later. Here: the
offline digits with random shifts (gasgd_tf/experiments/settings.py), 800
steps per client; within a seed every cell starts from the same random
weights.

Command:   python -m gasgd_tf.experiments.run --experiment=exp2
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp2 --config.smoke=True
Output:    runs/exp2/{clients{1,2,4,8}_nsync1_seed{0,1,2}/, summary.md, summary*.csv,
           plots/*.png}
Expected:  steps per client to 10% test error about 690, 385, 220 and 160 for
           1, 2, 4 and 8 clients; 8 clients behind 4 at 80 steps, ahead
           after (EXPERIMENTS.md, "Experiment 2").
Runtime:   about 7 minutes on 2 CPU cores (12 runs; 8 clients take 60 s each).
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    config.name = "exp2"
    config.sweep.clients = (1, 2, 4, 8)
    config.sweep.n_sync = (1,)
    return config
