"""The training loop: the one place where data, model, optimizer and checkpoints meet.

Data parallel over a 1-D ``Mesh`` (axis ``data``): the batch is sharded over every device of
every process and the state is replicated; each device computes the loss and gradient of
its own rows (:mod:`resnext_jax.train.steps`) and one all-reduce averages the gradients.
BatchNorm statistics are over the global batch. The same code runs on one CPU, on simulated
devices, on several processes and on a TPU pod slice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from resnext_jax import data
from resnext_jax.errors import UsageError
from resnext_jax.ops import huge_pages_hint
from resnext_jax.train.builders import (
    build_steps,
    check_batches,
    make_mesh,
    model_from_config,
)
from resnext_jax.train.checkpoint import Checkpointer
from resnext_jax.train.config import config_from_json
from resnext_jax.train.files import WorkdirLock, append_line, is_remote, write_text
from resnext_jax.train.metrics import MetricWriter
from resnext_jax.train.steps import TrainState
from resnext_jax.transforms import Transform
from resnext_jax.weights import LoadReport, Pretrained, native
from resnext_jax.workdir import CHECKPOINTS, FINAL_WEIGHTS, MODEL
from resnext_jax.zoo import PretrainedCfg, get_entry


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN / Inf; the last good checkpoint is kept."""


class RunInterrupted(Exception):  # noqa: N818 - a stop, not a failure
    """SIGTERM (preemption) or Ctrl-C stopped training after saving ``step``; running the
    same config on the same workdir resumes there."""

    def __init__(self, step: int, total: int, why: str) -> None:
        super().__init__(f"{why} at step {step} of {total}: saved; rerun the same command "
                         "to resume")
        self.step, self.total, self.why = step, total, why


class Trainer:
    """Everything a run builds from its config, in order: the mesh, the data, the model (and
    pretrained weights), the optimizer, the jitted steps and the checkpoints.

    ``initial_state()`` gives the newest readable checkpoint of the workdir or a fresh
    state; ``train_step(state, batch)`` and ``eval_step(state, batch)`` take global batches
    (``global_batch``); ``evaluate(state)`` runs the eval split. :func:`build` makes one.
    """

    def __init__(self, config: ConfigDict, workdir: str | os.PathLike, *, train: bool) -> None:
        workdir = os.fspath(workdir)
        self.config, self.workdir = config, workdir
        mesh = make_mesh()
        check_batches(config, mesh.size)  # before the data is opened
        d, n = config.data, jax.process_count()
        if d.name == "synthetic":
            self.num_classes = config.model.num_classes or get_entry(
                config.model.name).kwargs.get("num_classes", 1000)
        else:
            self.source = data.open_source(d.name, data_dir=d.data_dir,
                                           manual_dir=d.manual_dir, bad_images=d.bad_images)
            self.num_classes = self.source.num_classes
        model, self.pretrained = model_from_config(config, self.num_classes)
        self.transform = eval_transform(config, self.pretrained)
        name = config.model.name or self.pretrained.cfg.model
        self.cfg = PretrainedCfg(f"{name}.{os.path.basename(workdir.rstrip('/'))}",
                                 None, None, self.transform, self.num_classes, origin=workdir)
        model = model.clone(pretrained_cfg=self.cfg)
        if d.name == "synthetic":
            self.eval_data = self.train_data = data.SyntheticData(
                image_size=d.image_size, channels=d.channels, num_classes=self.num_classes,
                global_batch=config.batch_size, process_count=n, seed=config.seed)
        else:
            self._real_data(config, train)
        spe = self.train_data.steps_per_epoch if train else 1
        self.total_steps = config.num_train_steps if config.num_train_steps > 0 \
            else int(math.ceil(config.num_epochs * spe))
        self.steps = build_steps(config, model, mesh, num_classes=self.num_classes,
                                 steps_per_epoch=spe, total_steps=self.total_steps,
                                 variables=self.pretrained.variables if self.pretrained
                                 else None)
        self.model, self.abstract_state = model, self.steps.abstract_state
        self.train_step, self.eval_step = self.steps.train_step, self.steps.eval_step
        self.checkpointer = Checkpointer(
            os.path.join(workdir, CHECKPOINTS), keep=config.checkpoint.keep,
            best_metric=config.checkpoint.best_metric or None,
            best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save,
            read_only=not train)

    def _real_data(self, config: ConfigDict, train: bool) -> None:
        d, p, n = config.data, jax.process_index(), jax.process_count()
        preprocess = data.Preprocess(self.transform, image_size=d.image_size,
                                     train_kind=d.train_preprocess, pad=d.pad, flip=d.flip,
                                     auto_augment=d.auto_augment, erase_prob=d.random_erase,
                                     erase_count=d.random_erase_count,
                                     erase_mode=d.random_erase_mode)
        self.eval_data = data.EvalData(self.source, d.eval_split, preprocess,
                                       global_batch=config.eval_batch_size, process_index=p,
                                       process_count=n, cache=d.cache)
        self.train_data = data.TrainData(
            self.source, d.train_split, preprocess, global_batch=config.batch_size,
            num_shards=d.num_shards or n, process_index=p, process_count=n, seed=config.seed,
            shuffle_buffer=d.shuffle_buffer, cache=d.cache, prefetch=d.prefetch,
            repeats=d.repeats) \
            if train else None

    def fresh_state(self) -> TrainState:
        """Step 0: the pretrained weights (``config.model.pretrained``) or a random init."""
        return self.steps.init(jax.random.key(self.config.seed))

    def restore(self, step: int | None = None) -> tuple[TrainState, int] | None:
        """Checkpoint ``step`` of the workdir, or the newest readable one (None if none)."""
        if step is not None:
            return self.checkpointer.restore(step, self.abstract_state), step
        return self.checkpointer.restore_latest(self.abstract_state)

    def initial_state(self) -> tuple[TrainState, int]:
        """The newest readable checkpoint of this workdir, else a fresh state."""
        restored = self.restore()
        return restored if restored is not None else (self.fresh_state(), 0)

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.steps.batch_sharding, v)
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

    def pretrained_of(self, state: TrainState, metrics: dict[str, float] | None = None
                      ) -> Pretrained:
        """The weights of ``state`` (the moving average when EMA is on) as a
        :class:`Pretrained`, on the host; ``metrics``: its eval, whose top-1 of those weights
        is recorded in the config."""
        ema = self.config.ema_decay > 0
        variables = state.ema if ema else {"params": state.params,
                                           "batch_stats": state.batch_stats}
        local = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), variables)
        top1 = (metrics or {}).get("eval/ema_top1" if ema else "eval/top1")
        cfg = dataclasses.replace(self.cfg, top1=None if top1 is None else 100 * top1)
        return Pretrained(self.model.clone(pretrained_cfg=cfg), local, cfg,
                          LoadReport(self.workdir, "resnext_jax (trained)"))

    def close(self) -> None:
        self.checkpointer.close()


def build(config: ConfigDict, workdir: str | os.PathLike, *, train: bool = True) -> Trainer:
    """The :class:`Trainer` of ``config`` in ``workdir`` (``train=False``: no training data,
    for evaluation and inspection)."""
    return Trainer(config, workdir, train=train)


def restore(workdir: str | os.PathLike, step: int | None = None
            ) -> tuple[Trainer, TrainState, int]:
    """A finished or interrupted run, from its workdir alone: its trainer (built from the
    ``config.json`` it wrote, without training data), the state of checkpoint ``step`` (the
    newest readable one by default) and that step. Close the trainer when done."""
    with tf.io.gfile.GFile(os.path.join(os.fspath(workdir), "config.json")) as f:
        config = config_from_json(f.read(), os.path.join(os.fspath(workdir), "config.json"))
    trainer = build(config, workdir, train=False)
    restored = trainer.restore(step)
    if restored is None:
        trainer.close()
        raise FileNotFoundError(f"no checkpoint in {trainer.checkpointer.directory}")
    return trainer, *restored


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


class _Preemption:
    """SIGTERM (preemption) and Ctrl-C set a flag that the loop checks after each step, so
    it saves where it stands and stops; a second Ctrl-C stops at once. With several
    processes the JAX preemption service decides, so that all stop at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        if jax.process_count() == 1:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal is not None

    def restore(self) -> None:
        if jax.process_count() == 1:
            for s, handler in self._old.items():
                signal.signal(s, handler)


def train_and_evaluate(config: ConfigDict, workdir: str | os.PathLike) -> dict[str, float]:
    """Train (resuming from ``workdir`` when it holds checkpoints); returns the last eval."""
    workdir = os.fspath(workdir)
    created = not tf.io.gfile.exists(workdir)
    tf.io.gfile.makedirs(workdir)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    try:
        return _train(config, workdir)
    except BaseException:
        if created and lock is not None:
            _remove_if_empty(workdir)  # a run that never started leaves nothing behind
        raise
    finally:
        if lock is not None:
            lock.release()


def _remove_if_empty(workdir: str) -> None:
    """Remove a workdir this run created if it holds nothing but its lock and folders."""
    if is_remote(workdir):
        return
    for _, _, files in os.walk(workdir):
        if set(files) - {".lock"}:
            return
    shutil.rmtree(workdir, ignore_errors=True)


def _train(config: ConfigDict, workdir: str) -> dict[str, float]:
    run = build(config, workdir)
    main = jax.process_index() == 0
    if main:
        write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
        write_text(os.path.join(workdir, MODEL),
                   json.dumps(native.model_meta(run.model, run.cfg.model), indent=2))
    state, step = run.initial_state()
    if main and (hint := huge_pages_hint()):  # a notebook's kernel; the CLI re-executes itself
        print(f"note: {hint}", file=sys.stderr)
    if step >= run.total_steps and main:
        print(f"the run in {workdir} is already finished (step {step} of {run.total_steps}):"
              " evaluating its final state", file=sys.stderr)
    elif step and main:
        print(f"resuming from step {step} of {run.total_steps} ({run.checkpointer.directory})",
              file=sys.stderr)
    writer, ckpt = MetricWriter(workdir, step), run.checkpointer
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
    tick, pending, why = time.perf_counter(), None, ""
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
                why = "interrupted" if preemption.signal == signal.SIGINT else "preempted"
                tqdm.write(f"{why}: saving step {step} and exiting; rerun the same command "
                           "to resume", file=sys.stderr)
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
    if step < run.total_steps:
        raise RunInterrupted(step, run.total_steps, why)
    if not last_eval:  # rerun of a finished run
        last_eval = run.evaluate(state)
    if main:
        _export_weights(run.pretrained_of(state, last_eval),
                        os.path.join(workdir, FINAL_WEIGHTS))
        write_text(os.path.join(workdir, "final_metrics.json"),
                   json.dumps({"step": step, **last_eval}, indent=2))
    return last_eval


def _export_weights(trained: Pretrained, path: str) -> None:
    """Our own weight file, which ``resnext_jax.load(path)`` (or the workdir) reads back."""
    if not is_remote(path):
        trained.save(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trained.save(os.path.join(tmp, "w"))
        tf.io.gfile.copy(os.path.join(tmp, "w"), path, overwrite=True)


def _best_metrics(last_eval: dict[str, float]) -> dict[str, float]:
    """orbax metric names: ``eval/top1`` becomes ``eval_top1`` (checkpoint.best_metric)."""
    return {k.replace("/", "_"): v for k, v in last_eval.items()}


def _check_finite(metrics: dict, step: int, ckpt: Checkpointer) -> dict:
    metrics = jax.device_get(metrics)
    if not metrics.pop("finite"):
        ckpt.wait()
        kept = ckpt.steps()
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


def evaluate(config: ConfigDict, workdir: str | os.PathLike, step: int | None = None,
             report: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Eval-only: a checkpoint of ``workdir`` (the newest, or ``step``), or the pretrained
    weights of ``config.model.pretrained`` when the workdir has no checkpoint; appended to
    ``workdir/eval_metrics.jsonl`` after ``report(result)``."""
    workdir = os.fspath(workdir)
    run = build(config, workdir, train=False)
    try:
        if (restored := run.restore(step)) is not None:
            state, source = restored[0], f"step {restored[1]}"
        elif config.model.pretrained:
            state, source = run.fresh_state(), config.model.pretrained
        else:
            raise FileNotFoundError(
                f"nothing to evaluate: no checkpoint in {run.checkpointer.directory} and no "
                "--config.model.pretrained=NAME_OR_FILE")
        metrics = run.evaluate(state)
    finally:
        run.close()
    result = {"weights": source, "split": config.data.eval_split, **metrics}
    if report is not None:  # before any write, which may fail
        report(result)
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(workdir)
        append_line(os.path.join(workdir, "eval_metrics.jsonl"), json.dumps(result))
    return result
