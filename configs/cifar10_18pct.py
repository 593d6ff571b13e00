"""cuda-convnet's CIFAR-10 "layers-18pct" net with A-SGD: 4 clients, crops and flips.

Krizhevsky's cuda-convnet reached about 18% test error with this net
(3 conv layers, spatial response normalisation, 89.6k parameters on
32x32). Training takes random 24x24 crops with flips; the evaluator scores
the centre crop and ten crops, as cuda-convnet's multi-view test did.

Needs the CIFAR-10 download (tfds fetches it into data_dir on first use).

Command:   python -m gasgd_tf.main --config=configs/cifar10_18pct.py \\
               --config.data.data_dir=/data/tfds
Expected:  not run here (no network for the download).
Runtime:   an hour or more on 2 CPU cores; minutes on GPUs.
"""

from gasgd_tf import config_base


def get_config():
    config = config_base.get_base_config()
    config.num_workers = 4
    config.num_steps = 20_000
    config.batch_size = 128
    config.n_sync = 1
    config.data.name = "cifar10"
    config.data.crop = 24
    config.data.flip = True
    config.data.shuffle_buffer = 10_000
    config.model.name = "cifar10_18pct"
    config.model.dropout = 0.0
    config.model.lrn = True
    config.worker.learning_rate = 0.001
    config.worker.momentum = 0.9
    config.worker.log_every_steps = 100
    config.ps.learning_rate = 0.001
    config.ps.momentum = 0.9
    config.eval.every_secs = 60.0
    config.eval.multi_crop = True
    return config
