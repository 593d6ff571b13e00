"""The paper's ILSVRC-2012 setting: Krizhevsky et al.'s net, 8 clients, one GPU each.

Paine et al. (2013) trained the cuda-convnet ImageNet network (here
`paper_imagenet`: single tower, 62.4M parameters, LRN, dropout 0.5) on
random 224x224 crops of images whose shorter side is resized to 256, with
horizontal flips, and tested on the centre crop and on ten crops (centre,
four corners, their mirrors). Learning rate 0.01 and momentum 0.9 as in
Krizhevsky et al. 2012, here on the server; batch 128 per client.

Needs the ILSVRC-2012 tars (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar)
downloaded by hand into a folder: tfds builds `imagenet2012` from there.

Command:   python -m gasgd_tf.main --config=configs/paper_imagenet.py \\
               --config.data.manual_dir=/data/imagenet/tars \\
               --config.data.data_dir=/data/tfds
Expected:  not run here (no ImageNet and no GPU on these machines); the
           paper reports about 45% top-1 error after days on GPUs.
Runtime:   days on 8 GPUs; the first run spends hours preparing the data.
"""

from gasgd_tf import config_base


def get_config():
    config = config_base.get_base_config()
    config.num_workers = 8
    config.num_steps = 112_500  # 90 epochs of 1.28M images: 8 clients x 128 images a step.
    config.batch_size = 128
    config.n_sync = 1
    config.data.name = "imagenet2012"
    config.data.resize = 256
    config.data.crop = 224
    config.data.flip = True
    config.data.shuffle_buffer = 10_000
    config.model.name = "paper_imagenet"
    config.model.dropout = 0.5
    config.model.lrn = True
    config.worker.learning_rate = 0.01
    config.worker.log_every_steps = 100
    config.ps.learning_rate = 0.01
    config.ps.momentum = 0.9
    config.ps.weight_decay = 0.0  # Keras-style decoupled decay; the paper used L2 of 5e-4.
    config.eval.batch_size = 250
    config.eval.every_secs = 1800.0
    config.eval.multi_crop = True
    config.launcher.log_every_secs = 60.0
    return config
