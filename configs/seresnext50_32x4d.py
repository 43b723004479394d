"""SE-ResNeXt-50 (32x4d) on ImageNet, the SENet paper's recipe (Hu et al., section 6.1).

SGD momentum 0.9, lr 0.6 for batch 1024 (0.15 per 256), divided by 10 every 30 epochs,
100 epochs; weight decay 1e-4 (the ResNeXt paper's; SENet does not state it); random-size
crop to 224 + flip; 224 center crop for eval.
Paper: 21.10 % top-1 / 5.49 % top-5 error.

python -m resnext_jax.main --config=configs/seresnext50_32x4d.py --workdir=DIR \
    --config.data.data_dir=TFDS_DIR
TPU target: v4-32 (batch 1024: 64 images a chip); check it from any host first with
python -m resnext_jax.main --mode=compile --config=seresnext50_32x4d --topology=v4-32
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "seresnext50_32x4d"
    c.data.name = "imagenet2012"
    c.batch_size = c.eval_batch_size = 1024
    c.num_epochs = 100.0
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.15  # x 1024 / 256 = 0.6
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "step"
    c.optimizer.decay_epochs = (30, 60, 90)
    c.optimizer.warmup_epochs = 0.0
    c.checkpoint.every_steps = 2500
    return c
