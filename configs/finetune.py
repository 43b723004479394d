"""Fine-tune ImageNet weights on a folder of your images (one subfolder per class).

Pretrained SE-ResNeXt-26d (timm's bt_in1k), a new head for your classes, stages 1-3 frozen
(BatchNorm in eval mode, no gradient), AdamW with a warmup and cosine decay, 128x128 crops of
your images (smaller than ImageNet's 224: quicker, and enough for small datasets). A flat
folder is split class by class into train[:80%] / train[80%:]; a folder with train/ and
test/ inside takes --config.data.eval_split=test. Minutes on a CPU for a few hundred images.

python -m resnext_jax.main --config=configs/finetune.py --workdir=DIR \\
    --config.data.name=/path/to/images
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "seresnext26d_32x4d"
    c.model.pretrained = "seresnext26d_32x4d.bt_in1k"
    c.model.train_from = "layer4"  # "fc": the head only; "stem": everything
    c.data.name = ""  # your folder: --config.data.name=/path/to/images
    c.data.train_split, c.data.eval_split = "train[:80%]", "train[80%:]"
    c.data.image_size = 128
    c.data.cache = True
    c.data.shuffle_buffer = 10_000
    c.batch_size = c.eval_batch_size = 16
    c.num_epochs = 10.0
    c.optimizer.name = "adamw"
    c.optimizer.base_lr = 1e-3
    c.optimizer.scale_by_batch = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.warmup_epochs = 1.0
    c.log_every_steps = 10
    c.eval_every_epochs = 2.0
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 1
    return c
