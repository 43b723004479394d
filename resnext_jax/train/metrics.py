"""Metrics to TensorBoard (clu) and a JSON-lines file, written by process 0 only.

``metrics.jsonl`` holds one JSON object per line and one record per step and kind (train or
eval): a run that resumes from step ``s`` first drops the records after ``s`` (they will be
written again) and a last line cut short by a crash or a full disk, saying so.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import tensorflow as tf
from clu import metric_writers

from resnext_jax.errors import UsageError
from resnext_jax.train.workdir_io import append_line, write_text
from resnext_jax.workdir import METRICS


def repair(path: str, last_step: int) -> str | None:
    """Keep the well-formed records of ``path`` up to ``last_step``; what was dropped, or
    None when nothing was."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        lines = f.read().split("\n")
    kept, torn, later = [], 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            step = None
        if type(step) is not int:  # torn, or not a record this project writes
            torn += 1
            continue
        if step > last_step:
            later += 1
        else:
            kept.append(line)
    if not torn and not later:
        return None
    write_text(path, "".join(line + "\n" for line in kept))
    return (f"{path}: dropped {torn} damaged line(s) and {later} record(s) after step "
            f"{last_step}, which this run writes again")


class MetricWriter:
    """``write(step, {"train/loss": ...})`` appends to ``metrics.jsonl`` and TensorBoard.
    ``start_step``: the step the run resumes from (its metrics file is repaired first)."""

    def __init__(self, workdir: str, start_step: int = 0) -> None:
        self.main = jax.process_index() == 0
        if self.main:
            self.path = os.path.join(workdir, METRICS)
            if os.path.islink(self.path):  # found before training, not at the first log
                raise UsageError(f"{self.path} is a symbolic link; remove it (nothing was "
                                 "written through it) and run again")
            if message := repair(self.path, start_step):
                logging.warning("%s", message)
            self.writer = metric_writers.create_default_writer(workdir, asynchronous=False)

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.main:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self.writer.write_scalars(step, scalars)
        # One line at a time, never truncating: earlier lines survive a crash or a full disk.
        append_line(self.path, json.dumps({"step": step, **scalars}))

    def close(self) -> None:
        if self.main:
            self.writer.close()
