"""Experiment 1: A-SGD against a single worker, same budget per client (the paper's Figure 1).

The paper compared its A-SGD system with a single GPU on ILSVRC-2012 and
plotted training and test error over time. "Same budget": every client runs
the same number of minibatches as the single worker (800 here); with one
GPU per client that is the same time, so A-SGD sees N times more data in
it. Here: 1 worker against 4 clients, n_sync = 1, on the offline digits
with random shifts (gasgd_tf/experiments/settings.py).

Command:   python -m gasgd_tf.experiments.run --experiment=exp1
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp1 --config.smoke=True
Output:    runs/exp1/{clients{1,4}_nsync1_seed{0,1,2}/, summary.md, summary*.csv, plots/*.png}
Expected:  4 clients reach 10% test error in about 235 steps per client, one
           worker in about 680 (or not at all in 800); final test error about
           1.3% against 11% (3 seeds each; EXPERIMENTS.md, "Experiment 1").
Runtime:   about 2.5 minutes on 2 CPU cores (6 runs).
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    config.name = "exp1"
    config.sweep.clients = (1, 4)
    config.sweep.n_sync = (1,)
    return config
