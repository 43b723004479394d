"""Training and evaluation: ``build(config, workdir)`` gives a :class:`Trainer` (mesh, data,
model, optimizer, jitted per-device steps, orbax checkpoints); ``train_and_evaluate`` and
``evaluate`` run it as the CLI does; ``restore(workdir)`` reopens a run; ``get_config(name)``
reads a config.

The names load on first use, so that ``resnext_jax.train.config`` and ``.steps`` import
without TensorFlow (the command line answers a mistyped config in a second).
"""

import importlib

_WHERE = {
    "Checkpointer": "checkpoint", "CheckpointError": "checkpoint",
    "ConfigMismatchError": "checkpoint",
    "config_from_json": "config", "default_config": "config", "get_config": "config",
    "list_configs": "config", "WorkdirBusyError": "files", "TrainState": "steps",
    "NonFiniteLossError": "trainer", "RunInterrupted": "trainer", "Trainer": "trainer",
    "build": "trainer",
    "evaluate": "trainer", "restore": "trainer", "train_and_evaluate": "trainer",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'resnext_jax.train' has no attribute {name!r}")
    import resnext_jax.data  # noqa: F401  (first: it says which extras are missing)

    return getattr(importlib.import_module(f"resnext_jax.train.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
