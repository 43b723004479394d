"""ResNeXt-50 (32x4d) on ImageNet, torchvision's "new recipe" behind its IMAGENET1K_V2 weights
(81.198 % top-1, evaluated at 224 after resizing to 232).

Source: the weights' ``recipe`` link, pytorch/vision#3995 "new recipe", run with
references/classification/train.py (torchvision's blog "How to Train State-Of-The-Art Models
Using TorchVision's Latest Primitives"):
  --lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear
  --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002
  --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0
  --model-ema --val-resize-size 232
at 8 GPUs x 128 = 1024 images per step (the reference command's; the GPU count of the
ResNeXt runs is not published). Train crop 224 (no ``--train-crop-size``: the FixRes variant
is resnext101_32x8d_tv2), bilinear everywhere, flip, TrivialAugment Wide, random erasing with
zeros, one of Mixup / CutMix per batch. Its EMA (``--model-ema-steps 32
--model-ema-decay 0.99998``) updates every 32 steps with decay 1 - 2e-5 * 1024 * 32 / 600;
here it updates every step with that decay's 32nd root.

Where this differs: torchvision warms up from 1 % of the rate per epoch (here from 0, per
step), resets its EMA to the weights during the warm-up epochs (here: a plain EMA from step 0)
and puts weight decay on biases (here on none; it is 2e-5 on the classifier's bias alone).
Repeated augmentation came to torchvision after these weights (a later ResNet-50 retrain used
``--ra-sampler --ra-reps 4``): ``--config.data.repeats=4`` adds it.

python -m resnext_jax.main --config=resnext50_32x4d_tv2 --workdir=DIR \
    --config.data.data_dir=TFDS_DIR
TPU target: v4-32 (batch 1024: 64 images a chip); check it from any host first with
python -m resnext_jax.main --mode=compile --config=resnext50_32x4d_tv2 --topology=v4-32
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "resnext50_32x4d"
    c.data.name = "imagenet2012"
    c.batch_size = c.eval_batch_size = 1024
    c.num_epochs = 600.0
    c.data.image_size = 224
    c.data.eval_size = 224
    c.data.crop_pct = 224 / 232  # resize the shorter side to 232, center crop 224
    c.data.interpolation = "bilinear"
    c.data.auto_augment = "ta_wide"
    c.data.random_erase = 0.1
    c.data.random_erase_mode = "const"  # torchvision's RandomErasing(value=0)
    c.label_smoothing = 0.1
    c.mixing.mixup_alpha = 0.2
    c.mixing.cutmix_alpha = 1.0
    c.mixing.switch_prob = 0.5  # RandomChoice between RandomMixup and RandomCutmix
    c.ema_decay = (1 - 2e-5 * 1024 * 32 / 600) ** (1 / 32)  # 0.9999659
    c.optimizer.name = "sgd"
    c.optimizer.base_lr = 0.5 * 256 / 1024  # 0.5 at batch 1024
    c.optimizer.weight_decay = 2e-5  # never on BatchNorm (--norm-weight-decay 0.0)
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_epochs = 5.0
    c.checkpoint.every_steps = 2500
    return c
