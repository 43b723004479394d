"""ResNeXt-101 (32x8d) on ImageNet, torchvision's "new recipe with FixRes" behind its
IMAGENET1K_V2 weights (82.834 % top-1, evaluated at 224 after resizing to 232).

Source: the weights' ``recipe`` link, pytorch/vision#3995 "new recipe with fixres": the
recipe of ``resnext50_32x4d_tv2`` (read its docstring for the command and the differences)
with ``--train-crop-size 176``, training at a lower resolution than the evaluation's to
offset the apparent object size that random-resized crops inflate (Touvron et al. 2019).

python -m resnext_jax.main --config=resnext101_32x8d_tv2 --workdir=DIR \
    --config.data.data_dir=TFDS_DIR
TPU target: v4-32 (batch 1024: 64 images a chip); check it from any host first with
python -m resnext_jax.main --mode=compile --config=resnext101_32x8d_tv2 --topology=v4-32
"""

from resnext_jax.train.config import get_config as packaged_config


def get_config():
    c = packaged_config("resnext50_32x4d_tv2")
    c.model.name = "resnext101_32x8d"
    c.data.image_size = 176
    return c
