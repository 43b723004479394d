"""SE-ResNeXt-50 (32x4d) on ImageNet with RandAugment, Mixup and CutMix: the kind of recipe
behind timm's ``seresnext50_32x4d.racm_in1k`` weights (81.268 % top-1 at 224, 82.186 % at 288
with crop 0.95).

timm has not published the command that trained those weights (added 2020-09, "81.3 top-1
vs 79.1 cadene"); its docs call ``racm`` a RandAugment recipe with CutMix and Mixup. This
config is timm's documented command for this family, docs/training_hparam_examples.md
"ResNeXt-50 32x4d w/ RandAugment - 79.762" ("will also work well for SE-ResNeXt-50"):
  -b 192 (x 8 GPUs) --lr 0.6 --warmup-epochs 5 --epochs 240 --weight-decay 1e-4
  --sched cosine --reprob 0.4 --recount 3 --remode pixel --aa rand-m7-mstd0.5-inc1 --amp
with timm train.py's defaults for what it leaves out (SGD with Nesterov momentum 0.9, label
smoothing 0.1, random bilinear / bicubic training interpolation: bicubic here), plus what
``racm`` adds: an EMA of the weights (timm's default decay 0.9998) and Mixup / CutMix. Their
alphas for these weights are not published: 0.2 and 1.0 here (torchvision V2's values), one of
the two per batch (timm's switch probability 0.5). Evaluation: the weights' own transform,
224 at crop 0.875, bicubic (``--config.data.eval_size=288 --config.data.crop_pct=0.95`` for
their 288 figure).

python -m resnext_jax.main --config=seresnext50_32x4d_racm --workdir=DIR \
    --config.data.data_dir=TFDS_DIR
TPU target: v4-32 (batch 1536: 96 images a chip); check it from any host first with
python -m resnext_jax.main --mode=compile --config=seresnext50_32x4d_racm --topology=v4-32
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "seresnext50_32x4d"
    c.data.name = "imagenet2012"
    c.batch_size = c.eval_batch_size = 1536  # 192 x 8
    c.num_epochs = 240.0
    c.data.image_size = 224
    c.data.interpolation = "bicubic"
    c.data.auto_augment = "rand-m7-mstd0.5-inc1"
    c.data.random_erase = 0.4
    c.data.random_erase_count = 3
    c.data.random_erase_mode = "pixel"
    c.label_smoothing = 0.1
    c.mixing.mixup_alpha = 0.2
    c.mixing.cutmix_alpha = 1.0
    c.ema_decay = 0.9998
    c.optimizer.name = "sgd"
    c.optimizer.nesterov = True
    c.optimizer.base_lr = 0.6 * 256 / 1536  # 0.6 at batch 1536
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_epochs = 5.0
    c.checkpoint.every_steps = 2500
    return c
