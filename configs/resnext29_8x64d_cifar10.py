"""ResNeXt-29 (8x64d) on CIFAR-10, the paper's recipe (Xie et al. 2017, section 5.3).

SGD momentum 0.9, weight decay 5e-4, batch 128 with lr 0.1 (kept, not rescaled), 300
epochs, lr divided by 10 at epochs 150 and 225; pad-4 random crop + flip. Paper: 3.65 %
error, 34.4 M parameters. Needs `tfds build cifar10` once (network) or a prepared data dir.

python -m resnext_jax.main --config=configs/resnext29_8x64d_cifar10.py --workdir=DIR
"""

from resnext_jax.train.config import default_config

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # 0-1 scale
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def get_config():
    c = default_config()
    c.model.name = "resnext29_8x64d"
    c.data.name = "cifar10"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.train_preprocess, c.data.crop_pct = "pad_crop", 1.0
    c.data.pad, c.data.flip = 4, True
    c.data.mean, c.data.std = CIFAR10_MEAN, CIFAR10_STD
    c.data.cache = True
    c.data.shuffle_buffer = 50_000
    c.batch_size = c.eval_batch_size = 128
    c.num_epochs = 300.0
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.1
    c.optimizer.scale_by_batch = False
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_epochs = (150, 225)
    c.optimizer.warmup_epochs = 0.0
    c.checkpoint.every_steps = 2000
    return c
