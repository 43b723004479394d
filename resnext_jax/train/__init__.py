"""Training and evaluation: ``build(config, workdir)`` gives a :class:`Trainer` (mesh, data,
model, optimizer, jitted per-device steps, orbax checkpoints); ``train_and_evaluate`` and
``evaluate`` run it as the CLI does; ``restore(workdir)`` reopens a run."""

import resnext_jax.data  # noqa: F401  (first: it says which extras are missing)
from resnext_jax.train.checkpoint import Checkpointer, CheckpointError
from resnext_jax.train.config import (
    config_from_json,
    default_config,
    get_config,
    list_configs,
)
from resnext_jax.train.files import WorkdirBusyError
from resnext_jax.train.steps import TrainState
from resnext_jax.train.trainer import (
    NonFiniteLossError,
    Trainer,
    build,
    evaluate,
    restore,
    train_and_evaluate,
)

__all__ = ["CheckpointError", "Checkpointer", "NonFiniteLossError", "TrainState", "Trainer",
           "WorkdirBusyError",
           "build", "config_from_json", "default_config", "evaluate", "get_config",
           "list_configs", "restore",
           "train_and_evaluate"]
