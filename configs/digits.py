"""The embedded default: a small SE-ResNeXt on scikit-learn's handwritten digits (CPU, minutes).

python -m resnext_jax.main --config=configs/digits.py --workdir=/tmp/resnext_digits
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    # SE-ResNeXt: CIFAR-style 3x3 stem, three stages of one bottleneck (8 groups, SE r=16).
    c.model.name = "digits_seresnext"

    c.data.name = "sklearn_digits"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.image_size, c.data.channels = 8, 1
    c.data.train_preprocess, c.data.crop_pct = "pad_crop", 1.0
    c.data.pad, c.data.flip = 1, False
    c.data.mean, c.data.std = (0.5,), (0.5,)
    c.data.cache = True

    c.batch_size = c.eval_batch_size = 64
    c.num_epochs = 40.0
    c.optimizer.base_lr = 0.4  # x 64 / 256 = 0.1
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_epochs = 1.0
    c.log_every_steps = 20
    c.eval_every_epochs = 10.0
    c.checkpoint.every_steps = 100
    return c
