"""The training loop and evaluation: where data, the jitted steps and the checkpoints meet.

Data parallel over a 1-D ``Mesh`` (axis ``data``): the batch is sharded over every device of
every process and the state is replicated; each device computes the loss and gradient of
its own rows (:mod:`resnext_jax.train.steps`) and one all-reduce averages the gradients.
BatchNorm statistics are over the global batch. The same code runs on one CPU, on simulated
devices, on several processes and on a TPU pod slice. The loop's policy (log, evaluate,
save, stop on preemption, export) is one small function each.
"""

from __future__ import annotations

import json
import logging
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

from resnext_jax.ops import huge_pages_hint
from resnext_jax.train.checkpoint import Checkpointer
from resnext_jax.train.metrics import MetricWriter
from resnext_jax.train.run import Run, create_run
from resnext_jax.train.steps import TrainState
from resnext_jax.train.workdir_io import WorkdirLock, append_line, write_text
from resnext_jax.weights import Pretrained, native
from resnext_jax.workdir import (
    CONFIG,
    EVAL_METRICS,
    FINAL_METRICS,
    FINAL_WEIGHTS,
    MODEL,
    is_remote,
)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN / Inf; the last good checkpoint is kept."""


class RunInterrupted(Exception):  # noqa: N818 - a stop, not a failure
    """SIGTERM (preemption) or Ctrl-C stopped training after saving ``step``; running the
    same config on the same workdir resumes there."""

    def __init__(self, step: int, total: int, why: str) -> None:
        super().__init__(f"{why} at step {step} of {total}: saved; rerun the same command "
                         "to resume")
        self.step, self.total, self.why = step, total, why


def shard_batch(run: Run, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch as the global batch, sharded over the run's mesh."""
    return {k: jax.make_array_from_process_local_data(run.steps.batch_sharding, v)
            for k, v in batch.items()}


def evaluate_state(run: Run, state: TrainState) -> dict[str, float]:
    """``state`` on the run's eval split: ``eval/loss``, ``eval/top1``, ... (means)."""
    totals: dict[str, float] = {}
    for batch in run.eval_data:
        sums = jax.device_get(run.steps.eval_step(state, shard_batch(run, batch)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    if count != run.eval_data.num_examples:
        raise AssertionError(f"eval saw {count} examples, split has "
                             f"{run.eval_data.num_examples}")
    return {f"eval/{k}": v / count for k, v in totals.items()}


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
        run = create_run(config, workdir)
        try:
            return _train(run)
        finally:
            run.close()
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


def _train(run: Run) -> dict[str, float]:
    config, main = run.config, jax.process_index() == 0
    state, step = _start(run)
    writer, ckpt = MetricWriter(run.workdir, step), run.checkpointer
    per_epoch = run.train_data.steps_per_epoch
    eval_every = int(config.eval_every_epochs * per_epoch) if config.eval_every_epochs > 0 \
        else 0
    preemption, batches = _Preemption(), run.train_data.iterate(step)
    bar = tqdm(total=run.total_steps, initial=step, disable=not main, unit="step",
               dynamic_ncols=True)
    last_eval: dict[str, float] = {}
    history: list[dict] = []
    tick, pending, why = time.perf_counter(), None, ""
    try:
        while step < run.total_steps:
            state, metrics = run.steps.train_step(state, shard_batch(run, next(batches)))
            if pending is not None:  # one step behind, so the host never waits on the device
                history.append(_check_finite(pending, step, ckpt))
            pending, step = metrics, step + 1
            bar.update(1)
            at_end = step == run.total_steps
            do_eval = at_end or (eval_every and step % eval_every == 0)
            do_save = do_eval or step % config.checkpoint.every_steps == 0
            if step % config.log_every_steps == 0 or do_save:
                history.append(_check_finite(pending, step, ckpt))
                tick = _log(writer, bar, step, history, tick, config.batch_size)
                pending, history = None, []
            if do_eval:
                last_eval = _evaluate(run, state, step, writer)
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
            writer.close()
    if step < run.total_steps:
        raise RunInterrupted(step, run.total_steps, why)
    last_eval = last_eval or evaluate_state(run, state)  # a rerun of a finished run
    if main:
        _finish(run, state, step, last_eval)
    return last_eval


def _start(run: Run) -> tuple[TrainState, int]:
    """Record the config and model in the workdir; the state to start from, said aloud."""
    main, workdir = jax.process_index() == 0, run.workdir
    if main:
        write_text(os.path.join(workdir, CONFIG), run.config.to_json_best_effort(indent=2))
        write_text(os.path.join(workdir, MODEL),
                   json.dumps(native.model_meta(run.model, run.cfg.model, run.cfg), indent=2))
    state, step = run.initial_state()
    if main and (hint := huge_pages_hint()):  # a notebook's kernel; the CLI re-executes itself
        print(f"note: {hint}", file=sys.stderr)
    if step >= run.total_steps and main:
        print(f"the run in {workdir} is already finished (step {step} of {run.total_steps}):"
              " evaluating its final state", file=sys.stderr)
    elif step and main:
        print(f"resuming from step {step} of {run.total_steps} ({run.checkpointer.directory})",
              file=sys.stderr)
    logging.info("%d steps (%d per epoch) of global batch %d on %d device(s), %d process(es)",
                 run.total_steps, run.train_data.steps_per_epoch, run.config.batch_size,
                 jax.device_count(), jax.process_count())
    return state, step


def _log(writer: MetricWriter, bar: tqdm, step: int, history: list[dict], since: float,
         batch_size: int) -> float:
    """Write the mean of the steps since the last log; returns the time it was written."""
    now = time.perf_counter()
    summary = {f"train/{k}": float(np.mean([h[k] for h in history])) for k in history[0]}
    summary["train/learning_rate"] = float(history[-1]["learning_rate"])
    summary["train/step_time"] = (now - since) / len(history)
    summary["train/images_per_sec"] = batch_size * len(history) / (now - since)
    writer.write(step, summary)
    bar.set_postfix(loss=f"{summary['train/loss']:.3f}", top1=f"{summary['train/top1']:.3f}")
    return now


def _evaluate(run: Run, state: TrainState, step: int, writer: MetricWriter
              ) -> dict[str, float]:
    metrics = evaluate_state(run, state)
    writer.write(step, {**metrics, "epoch": step / run.train_data.steps_per_epoch})
    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
               file=sys.stderr)
    return metrics


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


def _finish(run: Run, state: TrainState, step: int, last_eval: dict[str, float]) -> None:
    """The final weights, which ``resnext_jax.load(workdir)`` reads, and the last eval."""
    _export_weights(run.trained_weights(state, last_eval),
                    os.path.join(run.workdir, FINAL_WEIGHTS))
    write_text(os.path.join(run.workdir, FINAL_METRICS),
               json.dumps({"step": step, **last_eval}, indent=2))


def _export_weights(trained: Pretrained, path: str) -> None:
    if not is_remote(path):
        trained.save(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trained.save(os.path.join(tmp, "w"))
        tf.io.gfile.copy(os.path.join(tmp, "w"), path, overwrite=True)


def evaluate(config: ConfigDict, workdir: str | os.PathLike, step: int | None = None,
             report: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Eval-only: a checkpoint of ``workdir`` (the newest, or ``step``), or the pretrained
    weights of ``config.model.pretrained`` when the workdir has no checkpoint; appended to
    ``workdir/eval_metrics.jsonl`` after ``report(result)``."""
    workdir = os.fspath(workdir)
    run = create_run(config, workdir, train=False)
    try:
        if (restored := run.load_state(step)) is not None:
            state, source = restored[0], f"step {restored[1]}"
        elif config.model.pretrained:
            state, source = run.fresh_state(), config.model.pretrained
        else:
            raise FileNotFoundError(
                f"nothing to evaluate: no checkpoint in {run.checkpointer.directory} and no "
                "--config.model.pretrained=NAME_OR_FILE")
        metrics = evaluate_state(run, state)
    finally:
        run.close()
    result = {"weights": source, "split": config.data.eval_split, **metrics}
    if report is not None:  # before any write, which may fail
        report(result)
    if jax.process_index() == 0:
        tf.io.gfile.makedirs(workdir)
        append_line(os.path.join(workdir, EVAL_METRICS), json.dumps(result))
    return result
