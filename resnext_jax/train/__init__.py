"""Training and evaluation: ``train_and_evaluate(config, workdir)`` and ``evaluate`` run as the
CLI does; ``create_run(config, workdir)`` gives the :class:`Run` they use (data, model, jitted
per-device steps, orbax checkpoints) and ``reopen(workdir)`` a finished run's;
``get_config(name)`` reads a config.

The names load on first use, so that ``resnext_jax.train.config`` and ``.steps`` import
without TensorFlow (the command line answers a mistyped config in a second).
"""

import importlib

_WHERE = {
    "Checkpointer": "checkpoint", "CheckpointError": "checkpoint",
    "ConfigMismatchError": "checkpoint",
    "config_from_json": "config", "default_config": "config", "get_config": "config",
    "list_configs": "config", "WorkdirBusyError": "workdir_io", "TrainState": "steps",
    "Run": "run", "create_run": "run", "reopen": "run",
    "NonFiniteLossError": "loop", "RunInterrupted": "loop", "evaluate": "loop",
    "evaluate_state": "loop", "shard_batch": "loop", "train_and_evaluate": "loop",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'resnext_jax.train' has no attribute {name!r}")
    import resnext_jax.data  # noqa: F401  (first: it says which extras are missing)

    return getattr(importlib.import_module(f"resnext_jax.train.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
