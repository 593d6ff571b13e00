"""Experiment 4: what helps 8 clients from a cold start: staleness policies and Adagrad.

Asynchronous SGD with many clients applies stale gradients; later work
answered with staleness-aware step sizes (Zhang et al. 2016), bounded
staleness (Ho et al. 2013), delay compensation (DC-ASGD, Zheng et al.
2017), and DistBelief ran Adagrad on its server. This sweep runs 8 clients,
cold start, n_sync = 1, on the offline digits with shifts (the setting of
exp1-3, gasgd_tf/experiments/settings.py), once per variant:

  none      plain A-SGD, server SGD 0.1 (exp2's 8-client cell);
  lr_scale  the step divided by max(1, staleness);
  bounded   no push staler than 2 versions (at most 3 clients compute at once);
  dc_asgd   gradients compensated with lambda = 0.04 (the paper's constant);
  adagrad   server-side Adagrad, learning rate 0.01, no staleness policy.

Command:   python -m gasgd_tf.experiments.run --experiment=exp4
Smoke:     python -m gasgd_tf.experiments.run --experiment=exp4 --config.smoke=True
Output:    runs/exp4/{<variant>_clients8_nsync1_seed*/, summary.md, summary*.csv,
           plots/*.png}
Expected:  steps per client to 10% test error about 175 (none), 210
           (lr_scale), 105 (bounded, max staleness 2), 150 (dc_asgd) and 260
           (adagrad) (EXPERIMENTS.md, "Experiment 4").
Runtime:   about 16 minutes on 2 CPU cores (15 runs).
"""

from gasgd_tf.experiments import settings


def get_config():
    config = settings.experiment_config()
    config.name = "exp4"
    config.sweep.clients = (8,)
    config.sweep.n_sync = (1,)
    config.sweep.variants = {
        "none": {},
        "lr_scale": {"ps": {"staleness": "lr_scale"}},
        "bounded": {"ps": {"staleness": "bounded", "staleness_bound": 2}},
        "dc_asgd": {"ps": {"staleness": "dc_asgd", "dc_lambda": 0.04}},
        "adagrad": {"ps": {"optimizer": "adagrad", "learning_rate": 0.01}},
    }
    return config
