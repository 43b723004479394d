"""Throughput: SE-ResNeXt-50 on synthetic 224x224 batches (no input pipeline, no files).

python -m resnext_jax.main --config=configs/synthetic.py --workdir=/tmp/throughput
Read train/images_per_sec and train/step_time in DIR/metrics.jsonl (or the log); the first
logged interval includes compilation. Other models / batch / precision by override, e.g.
--config.model.name=resnext50_32x4d --config.batch_size=128 --config.model.dtype=bfloat16
"""

from resnext_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "seresnext50_32x4d"
    c.data.name = "synthetic"
    c.batch_size = c.eval_batch_size = 64
    c.num_train_steps = 100
    c.log_every_steps = 10
    c.eval_every_epochs = 0.0
    c.optimizer.warmup_epochs = 0.0
    c.checkpoint.every_steps = 1_000_000  # only at the end
    c.checkpoint.best_metric = ""
    return c
