"""A run, built from its config by small functions and held in one frozen record: the data,
the model and its weights, the jitted steps (:mod:`resnext_jax.train.builders`) and the
checkpoints. The loop (:mod:`resnext_jax.train.loop`), the CLI and the notebooks share it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from ml_collections import ConfigDict

from resnext_jax import data
from resnext_jax.errors import UsageError
from resnext_jax.train.builders import (
    Steps,
    build_steps,
    check_run_config,
    make_mesh,
    model_from_config,
)
from resnext_jax.train.checkpoint import Checkpointer
from resnext_jax.train.config import config_from_json
from resnext_jax.train.steps import TrainState
from resnext_jax.transforms import Transform
from resnext_jax.weights import LoadReport, Pretrained
from resnext_jax.workdir import CHECKPOINTS, CONFIG
from resnext_jax.zoo import PretrainedCfg, get_entry


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """What a config builds in a workdir. ``steps.train_step(state, batch)`` and
    ``steps.eval_step`` take global batches (:func:`resnext_jax.train.shard_batch`);
    ``train_data`` is None for a run opened to evaluate."""

    config: ConfigDict
    workdir: str
    model: Any  # the ResNet
    pretrained: Pretrained | None  # the weights the run started from
    cfg: PretrainedCfg  # what the run's own weights will be: name, transform, classes
    train_data: Any
    eval_data: Any
    total_steps: int
    steps: Steps
    checkpointer: Checkpointer

    @property
    def transform(self) -> Transform:
        """The eval transform (its inputs: the weights' own, with what the config sets)."""
        return self.cfg.transform

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def fresh_state(self) -> TrainState:
        """Step 0: the pretrained weights (``config.model.pretrained``) or a random init."""
        return self.steps.init(jax.random.key(self.config.seed))

    def load_state(self, step: int | None = None) -> tuple[TrainState, int] | None:
        """Checkpoint ``step`` of the workdir, or the newest readable one (None if none)."""
        if step is not None:
            return self.checkpointer.restore(step, self.steps.abstract_state), step
        return self.checkpointer.restore_latest(self.steps.abstract_state)

    def initial_state(self) -> tuple[TrainState, int]:
        """The newest readable checkpoint of this workdir, else a fresh state."""
        restored = self.load_state()
        return restored if restored is not None else (self.fresh_state(), 0)

    def trained_weights(self, state: TrainState, metrics: dict[str, float] | None = None
                        ) -> Pretrained:
        """The weights of ``state`` (the moving average when EMA is on) on the host;
        ``metrics``: their eval, whose top-1 is recorded in the config."""
        ema = self.config.ema_decay > 0
        variables = state.ema if ema else {"params": state.params,
                                           "batch_stats": state.batch_stats}
        local = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), variables)
        top1 = (metrics or {}).get("eval/ema_top1" if ema else "eval/top1")
        cfg = dataclasses.replace(self.cfg, top1=None if top1 is None else 100 * top1)
        return Pretrained(self.model, local, cfg,
                          LoadReport(self.workdir, "resnext_jax (trained)"))

    def close(self) -> None:
        self.checkpointer.close()


def create_run(config: ConfigDict, workdir: str | os.PathLike, *, train: bool = True) -> Run:
    """The :class:`Run` of ``config`` in ``workdir``; ``train=False`` opens no training data
    (for evaluation and inspection). Close it when done."""
    workdir = os.fspath(workdir)
    mesh = make_mesh()
    check_run_config(config, mesh.size)  # before the data is opened
    source = open_source(config)
    num_classes = source.num_classes if source else config.model.num_classes or get_entry(
        config.model.name).kwargs.get("num_classes", 1000)
    model, pretrained = model_from_config(config, num_classes)
    name = config.model.name or pretrained.cfg.model
    cfg = PretrainedCfg(f"{name}.{os.path.basename(workdir.rstrip('/'))}", None, None,
                        eval_transform(config, pretrained), num_classes, origin=workdir)
    train_data, eval_data = open_data(config, source, cfg, train=train)
    per_epoch = train_data.steps_per_epoch if train else 1
    total = config.num_train_steps if config.num_train_steps > 0 \
        else int(math.ceil(config.num_epochs * per_epoch))
    steps = build_steps(config, model, mesh, num_classes=num_classes,
                        steps_per_epoch=per_epoch, total_steps=total,
                        variables=pretrained.variables if pretrained else None)
    checkpointer = Checkpointer(
        os.path.join(workdir, CHECKPOINTS), keep=config.checkpoint.keep,
        best_metric=config.checkpoint.best_metric or None,
        best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save,
        read_only=not train)
    return Run(config, workdir, model, pretrained, cfg, train_data, eval_data, total, steps,
               checkpointer)


def open_source(config: ConfigDict) -> data.Source | None:
    """The dataset ``config.data`` names (None for synthetic data)."""
    d = config.data
    if d.name == "synthetic":
        return None
    return data.open_source(d.name, data_dir=d.data_dir, manual_dir=d.manual_dir,
                            bad_images=d.bad_images)


def open_data(config: ConfigDict, source: data.Source | None, cfg: PretrainedCfg, *,
              train: bool) -> tuple[Any, Any]:
    """``(train_data, eval_data)``: this process's share of each split (no training data
    unless ``train``), preprocessed for ``cfg``'s transform."""
    d, p, n = config.data, jax.process_index(), jax.process_count()
    if source is None:
        def synthetic(batch: int) -> data.SyntheticData:
            return data.SyntheticData(
                image_size=d.image_size, channels=d.channels, num_classes=cfg.num_classes,
                global_batch=batch, process_count=n, seed=config.seed)

        return synthetic(config.batch_size), synthetic(config.eval_batch_size)
    preprocess = data.Preprocess(cfg.transform, image_size=d.image_size,
                                 train_kind=d.train_preprocess, pad=d.pad, flip=d.flip,
                                 auto_augment=d.auto_augment, erase_prob=d.random_erase,
                                 erase_count=d.random_erase_count,
                                 erase_mode=d.random_erase_mode)
    eval_data = data.EvalData(source, d.eval_split, preprocess,
                              global_batch=config.eval_batch_size, process_index=p,
                              process_count=n, cache=d.cache)
    train_data = data.TrainData(
        source, d.train_split, preprocess, global_batch=config.batch_size,
        num_shards=d.num_shards or n, process_index=p, process_count=n, seed=config.seed,
        shuffle_buffer=d.shuffle_buffer, cache=d.cache, prefetch=d.prefetch,
        repeats=d.repeats) if train else None
    return train_data, eval_data


def eval_transform(config: ConfigDict, pretrained: Pretrained | None) -> Transform:
    """The eval transform: the pretrained weights' own (else ImageNet's), with what
    ``config.data`` sets."""
    d = config.data
    base = pretrained.transform if pretrained else Transform()
    values = {"size": d.eval_size or d.image_size, "channels": d.channels,
              "crop_pct": d.crop_pct, "interpolation": d.interpolation, "mean": d.mean,
              "std": d.std}
    try:
        return dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})
    except ValueError as err:
        raise UsageError(f"{err} (set config.data.mean / std / crop_pct / interpolation)") \
            from None


def reopen(workdir: str | os.PathLike, step: int | None = None
           ) -> tuple[Run, TrainState, int]:
    """A finished or interrupted run, from its workdir alone: its :class:`Run` (built from
    the ``config.json`` it wrote, without training data), the state of checkpoint ``step``
    (the newest readable one by default) and that step. Close the run when done."""
    path = os.path.join(os.fspath(workdir), CONFIG)
    with tf.io.gfile.GFile(path) as f:
        config = config_from_json(f.read(), path)
    run = create_run(config, workdir, train=False)
    restored = run.load_state(step)
    if restored is None:
        run.close()
        raise FileNotFoundError(f"no checkpoint in {run.checkpointer.directory}")
    return run, *restored
