"""The paper's network, scaled down (`paper_imagenet_small`), on the offline digits.

The same layer sequence as Krizhevsky et al.'s net (five convs, LRN after
the first two, three max pools, two dropout dense layers) at a quarter of
its width, with a 5x5 stride-1 first layer so that 8x8 images survive;
random shifts of up to 2 pixels stand in for the paper's random crops, and
the evaluator reports ten-crop accuracy (shifts, no flips: digits are not
mirror-symmetric, so five crops) beside the centre crop.

Command:   python -m gasgd_tf.main --config=configs/paper_small_digits.py
Expected:  test accuracy 0.950 and 0.972 in two runs on the centre crop;
           0.958 and 0.961 with five crops (BUILD_NOTES.md, "Paper models on
           the offline data").
Runtime:   about a minute on 2 CPU cores.
"""

from gasgd_tf import config_base


def get_config():
    config = config_base.get_base_config()
    config.num_workers = 2
    config.num_steps = 1500  # It leaves chance level only after about 600 steps.
    config.batch_size = 32
    config.n_sync = 1
    config.data.pad = 2
    config.model.name = "paper_imagenet_small"
    config.model.width = 0.25
    config.model.lrn = True
    config.model.dropout = 0.5
    config.worker.learning_rate = 0.01
    config.worker.cpu_threads = 1
    config.ps.learning_rate = 0.01
    config.ps.momentum = 0.9
    config.eval.multi_crop = True
    return config
