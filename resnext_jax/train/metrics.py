"""Metrics to TensorBoard (clu) and a JSON-lines file, written by process 0 only.

Workdirs may be local or remote (``gs://...``): files go through ``tf.io.gfile``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import tensorflow as tf
from clu import metric_writers


def is_remote(path: str) -> bool:
    return "://" in path


def write_text(path: str, text: str) -> None:
    """Write then rename, so that a crash never leaves a half-written file."""
    tmp = path + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def append_line(path: str, line: str) -> None:
    """Append one line; object stores cannot append, so there the file is rewritten."""
    if not is_remote(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return
    old = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    write_text(path, old + line + "\n")


class MetricWriter:
    """``write(step, {"train/loss": ...})`` appends to ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, workdir: str) -> None:
        self.main = jax.process_index() == 0
        if self.main:
            self.writer = metric_writers.create_default_writer(workdir, asynchronous=False)
            self.path = os.path.join(workdir, "metrics.jsonl")

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
