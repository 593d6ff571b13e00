"""Experiment 1: A-SGD against a single worker, same budget per client (the paper's Figure 1).

The paper compared its A-SGD system with a single GPU on ILSVRC-2012 and
plotted training and test error over time. "Same budget": every client runs
the same number of minibatches as the single worker (800 here); with one
GPU per client that is the same time, so A-SGD sees N times more data in
it. Here: 1 worker against 4 clients, n_sync = 1, on the offline digits
with random shifts (gasgd_tf/experiments/settings.py).

Command:   python -m gasgd_tf.experiments.run --experiment=exp1
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp1 --config.smoke=True
Output:    runs/exp1/{clients1_nsync1/, clients4_nsync1/, summary.md, plots/*.png}
Expected:  see EXPERIMENTS.md, "Experiment 1" (measured here).
Runtime:   about 2 minutes on 2 CPU cores.
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    config.name = "exp1"
    config.sweep.clients = (1, 4)
    config.sweep.n_sync = (1,)
    return config
