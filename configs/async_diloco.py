"""Asynchronous DiLoCo (Liu et al. 2024, arXiv 2401.09135) on the offline digits.

configs/diloco.py without rounds: each worker's delta is applied as soon as
it arrives, with Delayed Nesterov (the momentum takes the average of the
last num_workers deltas, once every num_workers of them) and adaptive local
steps (DyLU: the server tells each worker its H from its measured speed, 50
for the fastest), so a slow worker syncs after fewer steps rather than
pushing stale deltas. Add --config.worker.step_delay_secs='(0.0,0.02)' to
make worker 1 slower (an emulation, named so in the outputs).

Command:   python -m gasgd_tf.main --config=configs/async_diloco.py
Expected:  test accuracy 0.967 to 0.983 in 3 runs here (seeds 1-3), 22 or 23 updates
           (the planner gave a worker fewer local steps now and then) (BUILD_NOTES.md,
           "Low-communication training").
Runtime:   about 45 s on 2 CPU cores without a GPU (60-110 s while other jobs
           shared the cores).
"""

from gasgd_tf import recipes


def get_config():
    config = recipes.async_diloco(recipes.default_run())
    config.name = "async_diloco"
    return config
