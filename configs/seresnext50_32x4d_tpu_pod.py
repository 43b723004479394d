"""SE-ResNeXt-50 on ImageNet for a TPU pod slice (v4-32: 256 images a chip; v5e-256: 16): large
batch.

Global batch 4096 in bfloat16 compute (fp32 parameters), lr scaled linearly (0.1 per 256
-> 1.6) with 5 warmup epochs then cosine (Goyal et al. 2017), label smoothing 0.1,
Nesterov momentum; 100 epochs. For batches of 16k and more switch to LAMB:
--config.optimizer.name=lamb --config.optimizer.base_lr=... (You et al. 2020).

Check it from any host first (per-chip HBM, FLOPs, collectives; nothing runs):
python -m resnext_jax.main --mode=compile --config=seresnext50_32x4d_tpu_pod --topology=v4-32
(or --topology=v5e-256: global batch 4096 is 16 images a chip there).
On every host of the slice (same command):
python -m resnext_jax.main --distributed --config=configs/seresnext50_32x4d_tpu_pod.py \
    --workdir=gs://BUCKET/run --config.data.data_dir=gs://BUCKET/tensorflow_datasets
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "seresnext50_32x4d"
    c.model.dtype = "bfloat16"
    c.data.name = "imagenet2012"
    c.data.shuffle_buffer = 16_384
    c.data.prefetch = 4
    c.batch_size = c.eval_batch_size = 4096
    c.num_epochs = 100.0
    c.label_smoothing = 0.1
    c.optimizer.name = "sgd"
    c.optimizer.nesterov = True
    c.optimizer.base_lr = 0.1  # x 4096 / 256 = 1.6
    c.optimizer.weight_decay = 1e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_epochs = 5.0
    c.log_every_steps = 50
    c.checkpoint.every_steps = 1000
    return c
