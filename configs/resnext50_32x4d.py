"""ResNeXt-50 (32x4d) on ImageNet, the paper's recipe (Xie et al. 2017, section 4).

SGD momentum 0.9, weight decay 1e-4, batch 256 with lr 0.1 (scaled linearly for other
batches), divided by 10 three times (here at epochs 30, 60 and 80 of 90); random-size crop
to 224 + flip; single 224 center crop of the 256-resized image for eval. Paper: 22.2 %
top-1 error.

python -m resnext_jax.main --config=configs/resnext50_32x4d.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR
TPU target: v4-8 (batch 256: 64 images a chip); check it from any host first with
python -m resnext_jax.main --mode=compile --config=resnext50_32x4d --topology=v4-8
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "resnext50_32x4d"
    c.data.name = "imagenet2012"
    c.data.eval_split = "validation"
    c.batch_size = c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.1
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_epochs = (30, 60, 80)
    c.optimizer.warmup_epochs = 0.0  # the paper uses none at batch 256
    c.checkpoint.every_steps = 5000
    return c
