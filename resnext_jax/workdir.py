"""The layout of a training workdir, shared by the trainer that writes it and
``resnext_jax.load`` that reads it (which must not import the trainer)."""

CONFIG = "config.json"  # the run's config (resnext_jax.train.reopen reads it back)
METRICS = "metrics.jsonl"  # training summaries and evals, a JSON record a line
EVAL_METRICS = "eval_metrics.jsonl"  # --mode=eval results, appended
FINAL_METRICS = "final_metrics.json"  # the last eval, written at the last step only
MODEL = "model.json"  # the model's architecture and weight-set config (weights.native)
FINAL_WEIGHTS = "final_weights.msgpack"  # written at the last step only
CHECKPOINTS = "checkpoints"  # orbax: one folder a step, items STATE and DIGEST
STATE, DIGEST = "state", "digest"
# Keys of the DIGEST item: sha256 of the whole train state, and of the weights a load of the
# workdir returns (the moving average when the run kept one), both by resnext_jax.digest.
STATE_SHA256, WEIGHTS_SHA256 = "sha256", "weights_sha256"


def is_remote(path: str) -> bool:
    """An object-store URL (``gs://``, ``s3://`` ...): no appends, no directory renames."""
    return "://" in path
