"""The default run: asynchronous SGD on scikit-learn's bundled digits, offline.

One parameter server, 2 workers and an evaluator on this machine; the digits
CNN (151k parameters), n_sync=1 as in the paper's cold-start runs.

Command:   python -m gasgd_tf.main --config=configs/default.py   (make train)
Expected:  test accuracy 0.967 to 0.986 on the 359 test digits in ten runs
           here (BUILD_NOTES.md, "The default run"; 0.967 on a loaded machine).
Runtime:   17 to 25 s on 2 CPU cores without a GPU, about 9 s of it start-up.
"""

from gasgd_tf import recipes


def get_config():
    return recipes.default_run()
