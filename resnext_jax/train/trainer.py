"""The training loop: the one place where data, model, optimizer and checkpoints meet.

Data parallel over a 1-D ``Mesh`` (axis ``data``): the batch is sharded over every device of
every process, the state is replicated, ``jax.jit`` inserts the gradient all-reduce and
computes BatchNorm statistics over the global batch. The same code runs on one CPU, on
simulated devices, on several processes and on a TPU pod slice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from tqdm import tqdm

from resnext_jax import data
from resnext_jax.ops import compiler_options
from resnext_jax.train.checkpoint import Checkpointer
from resnext_jax.train.files import append_line, is_remote, write_text
from resnext_jax.train.metrics import MetricWriter
from resnext_jax.train.optim import create_optimizer, create_schedule
from resnext_jax.train.steps import (
    DATA_AXIS,
    TrainState,
    create_state,
    make_eval_step,
    make_train_step,
)
from resnext_jax.weights import save_weights
from resnext_jax.zoo import create_model, get_entry


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN / Inf; the last good checkpoint is kept."""


class Run:
    """Everything a train or eval run builds from the config, in order."""

    def __init__(self, config: ConfigDict, workdir: str, *, train: bool) -> None:
        self.config, self.workdir = config, workdir
        self.mesh = Mesh(np.array(jax.devices()), (DATA_AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        _check_divisible("batch_size", config.batch_size, jax.device_count(),
                         config.grad_accum_steps)
        _check_divisible("eval_batch_size", config.eval_batch_size, jax.device_count())
        d, n = config.data, jax.process_count()
        if d.name == "synthetic":
            self.num_classes = get_entry(config.model.name).kwargs.get("num_classes", 1000)
            self.eval_data = self.train_data = data.SyntheticData(
                image_size=d.image_size, channels=d.channels, num_classes=self.num_classes,
                global_batch=config.batch_size, process_count=n, seed=config.seed)
        else:
            self._real_data(config, train)
        spe = self.train_data.steps_per_epoch if train else 1
        self.total_steps = config.num_train_steps if config.num_train_steps > 0 \
            else int(math.ceil(config.num_epochs * spe))
        self.model, variables = self._model()
        self.schedule = create_schedule(config.optimizer, config.batch_size, spe,
                                        self.total_steps)
        tx = create_optimizer(config.optimizer, self.schedule)
        image_shape = (d.image_size, d.image_size, d.channels)

        def init(rng, variables):
            return create_state(self.model, tx, rng, image_shape, config.ema_decay > 0,
                                variables)

        rng = jax.random.key(config.seed)
        abstract = jax.eval_shape(init, rng, variables)
        self.state_sharding = jax.tree_util.tree_map(lambda _: self.replicated, abstract)
        self.abstract_state = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        self._rng, self._variables = rng, variables
        self.train_step = jax.jit(
            make_train_step(self.model, tx, self.schedule, num_classes=self.num_classes,
                            label_smoothing=config.label_smoothing, ema_decay=config.ema_decay,
                            accum_steps=config.grad_accum_steps, seed=config.seed,
                            mesh=self.mesh),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, self.replicated), donate_argnums=0,
            compiler_options=compiler_options(train=True))
        self.eval_step = jax.jit(
            make_eval_step(self.model, num_classes=self.num_classes,
                           use_ema=config.ema_decay > 0, mesh=self.mesh),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=self.replicated, compiler_options=compiler_options(train=False))
        self.checkpointer = Checkpointer(
            os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
            best_metric=config.checkpoint.best_metric or None,
            best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save)

    def _real_data(self, config: ConfigDict, train: bool) -> None:
        d, p, n = config.data, jax.process_index(), jax.process_count()
        source = data.open_source(d.name, data_dir=d.data_dir, manual_dir=d.manual_dir,
                                  bad_images=d.bad_images)
        self.num_classes = source.num_classes
        preprocess = data.Preprocess(
            image_size=d.image_size, channels=d.channels, train_kind=d.train_preprocess,
            eval_kind=d.eval_preprocess, eval_size=d.eval_size, crop_pct=d.crop_pct,
            pad=d.pad, flip=d.flip, mean=tuple(d.mean), std=tuple(d.std),
            resize_method=d.resize_method)
        self.eval_data = data.EvalData(source, d.eval_split, preprocess,
                                       global_batch=config.eval_batch_size, process_index=p,
                                       process_count=n, cache=d.cache)
        self.train_data = data.TrainData(
            source, d.train_split, preprocess, global_batch=config.batch_size,
            num_shards=d.num_shards or n, process_index=p, process_count=n, seed=config.seed,
            shuffle_buffer=d.shuffle_buffer, cache=d.cache, prefetch=d.prefetch) \
            if train else None

    def _model(self) -> tuple[Any, dict | None]:
        m = self.config.model
        overrides = {k: v for k, v in m.items() if k not in ("name", "pretrained")}
        overrides["dtype"] = jnp.dtype(overrides.get("dtype", "float32"))
        classes = self.num_classes
        if m.pretrained:
            # Keep a pretrained head when the class count matches; otherwise reset it.
            if get_entry(m.name).kwargs.get("num_classes", 1000) != classes:
                overrides["num_classes"] = classes
            return create_model(m.name, pretrained=m.pretrained, **overrides)
        return create_model(m.name, num_classes=classes, **overrides), None

    def initial_state(self) -> tuple[TrainState, int]:
        """The newest readable checkpoint of this workdir, else a fresh state."""
        restored = self.checkpointer.restore_latest(self.abstract_state)
        if restored is not None:
            logging.info("resuming from step %d of %s", restored[1],
                         self.checkpointer.directory)
            return restored
        return self._init(self._rng, self._variables), 0

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                for k, v in batch.items()}

    def evaluate(self, state: TrainState) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.eval_data:
            sums = jax.device_get(self.eval_step(state, self.global_batch(batch)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count")
        if count != self.eval_data.num_examples:
            raise AssertionError(f"eval saw {count} examples, split has "
                                 f"{self.eval_data.num_examples}")
        return {f"eval/{k}": v / count for k, v in totals.items()}


def _check_divisible(key: str, batch: int, devices: int, micro_batches: int = 1) -> None:
    """Every device gets the same rows, in ``micro_batches`` equal parts."""
    unit = devices * micro_batches
    if batch % unit:
        parts = f"the {devices} devices" + (f" x {micro_batches} grad_accum_steps"
                                            if micro_batches > 1 else "")
        raise ValueError(
            f"{key}={batch} is not divisible by {parts}; use a multiple of {unit}, "
            f"e.g. --config.{key}={max(unit, batch // unit * unit)}")


class _Preemption:
    """SIGTERM sets a flag (one process) or the JAX preemption service decides (several)."""

    def __init__(self) -> None:
        self.flag = False
        if jax.process_count() == 1:
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def restore(self) -> None:
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
    """Train (resuming from ``workdir`` when it holds checkpoints); returns the last eval."""
    tf.io.gfile.makedirs(workdir)
    run = Run(config, workdir, train=True)
    main = jax.process_index() == 0
    if main:
        write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    state, step = run.initial_state()
    writer, ckpt = MetricWriter(workdir), run.checkpointer
    spe = run.train_data.steps_per_epoch
    eval_every = int(config.eval_every_epochs * spe) if config.eval_every_epochs > 0 else 0
    logging.info("%d steps (%d per epoch) of global batch %d on %d device(s), %d process(es)",
                 run.total_steps, spe, config.batch_size, jax.device_count(),
                 jax.process_count())
    preemption, batches = _Preemption(), run.train_data.iterate(step)
    bar = tqdm(total=run.total_steps, initial=step, disable=not main, unit="step",
               dynamic_ncols=True)
    last_eval: dict[str, float] = {}
    history: list[dict] = []
    tick, pending = time.perf_counter(), None
    try:
        while step < run.total_steps:
            state, metrics = run.train_step(state, run.global_batch(next(batches)))
            if pending is not None:  # one step behind, so the host never waits on the device
                history.append(_check_finite(pending, step, ckpt))
            pending, step = metrics, step + 1
            bar.update(1)
            at_end = step == run.total_steps
            do_eval = at_end or (eval_every and step % eval_every == 0)
            do_save = do_eval or step % config.checkpoint.every_steps == 0
            if step % config.log_every_steps == 0 or do_save:
                history.append(_check_finite(pending, step, ckpt))
                pending = None
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                summary = _summarise(history, elapsed, config.batch_size)
                writer.write(step, summary)
                bar.set_postfix(loss=f"{summary['train/loss']:.3f}",
                                top1=f"{summary['train/top1']:.3f}")
                history = []
            if do_eval:
                last_eval = run.evaluate(state)
                writer.write(step, {**last_eval, "epoch": step / spe})
                tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                         last_eval.items()), file=sys.stderr)
            if do_save:
                ckpt.save(step, state, _best_metrics(last_eval) if do_eval else None)
            if preemption.reached(step) and not at_end:
                tqdm.write(f"preempted: saving step {step} and exiting", file=sys.stderr)
                ckpt.save(step, state)
                break
    finally:
        bar.close()
        preemption.restore()
        try:
            ckpt.wait()
        finally:
            ckpt.close()
            writer.close()
    if step == run.total_steps and not last_eval:  # rerun of a finished run
        last_eval = run.evaluate(state)
    if main and step == run.total_steps:
        _export_weights(run, state, os.path.join(workdir, "final_weights.msgpack"))
        write_text(os.path.join(workdir, "final_metrics.json"),
                   json.dumps({"step": step, **last_eval}, indent=2))
    return last_eval


def _export_weights(run: Run, state: TrainState, path: str) -> None:
    """The evaluated weights (EMA when on) in the package's own format, for
    ``create_model(name, pretrained=path)`` / ``--mode=eval --config.model.pretrained=path``."""
    params = state.ema_params if run.config.ema_decay > 0 else state.params
    local = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)),
                                   {"params": params, "batch_stats": state.batch_stats})
    if not is_remote(path):
        save_weights(path, local, run.model, model_name=run.config.model.name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(os.path.join(tmp, "w"), local, run.model, model_name=run.config.model.name)
        tf.io.gfile.copy(os.path.join(tmp, "w"), path, overwrite=True)


def _best_metrics(last_eval: dict[str, float]) -> dict[str, float]:
    """orbax metric names: ``eval/top1`` becomes ``eval_top1`` (checkpoint.best_metric)."""
    return {k.replace("/", "_"): v for k, v in last_eval.items()}


def _check_finite(metrics: dict, step: int, ckpt: Checkpointer) -> dict:
    metrics = jax.device_get(metrics)
    if not metrics.pop("finite"):
        ckpt.wait()
        kept = sorted(ckpt.manager.all_steps())
        raise NonFiniteLossError(
            f"loss or gradient became NaN/Inf at step {step} (loss {metrics['loss']}); "
            f"stopped without saving. Last good checkpoint: "
            f"{f'step {kept[-1]}' if kept else 'none'} in {ckpt.directory}. Lower "
            "optimizer.base_lr, add warmup or optimizer.grad_clip_norm, then rerun to resume.")
    return metrics


def _summarise(history: list[dict], elapsed: float, batch: int) -> dict[str, float]:
    mean = {f"train/{k}": float(np.mean([h[k] for h in history])) for k in history[0]}
    mean["train/learning_rate"] = float(history[-1]["learning_rate"])
    mean["train/step_time"] = elapsed / len(history)
    mean["train/images_per_sec"] = batch * len(history) / elapsed
    return mean


def evaluate(config: ConfigDict, workdir: str, step: int | None = None) -> dict[str, float]:
    """Eval-only: a checkpoint of ``workdir`` (the newest, or ``step``), or the pretrained
    weights of ``config.model.pretrained`` when the workdir has no checkpoint."""
    run = Run(config, workdir, train=False)
    try:
        if step is not None:
            state, source = run.checkpointer.restore(step, run.abstract_state), f"step {step}"
        elif (restored := run.checkpointer.restore_latest(run.abstract_state)) is not None:
            state, source = restored[0], f"step {restored[1]}"
        elif config.model.pretrained:
            state, source = run._init(run._rng, run._variables), config.model.pretrained
        else:
            raise FileNotFoundError(
                f"nothing to evaluate: no checkpoint in {run.checkpointer.directory} and no "
                "--config.model.pretrained=NAME_OR_FILE")
        metrics = run.evaluate(state)
    finally:
        run.checkpointer.close()
    result = {"weights": source, "split": config.data.eval_split, **metrics}
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(workdir)
        append_line(os.path.join(workdir, "eval_metrics.jsonl"), json.dumps(result))
    return result
