"""Sharded training and evaluation (jit over a Mesh, optax, orbax, clu)."""

from resnext_jax.train.checkpoint import Checkpointer, CheckpointError
from resnext_jax.train.config import default_config
from resnext_jax.train.trainer import NonFiniteLossError, evaluate, train_and_evaluate

__all__ = ["CheckpointError", "Checkpointer", "NonFiniteLossError", "default_config",
           "evaluate", "train_and_evaluate"]
