"""Metrics to TensorBoard (clu) and a JSON-lines file, written by process 0 only."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from clu import metric_writers

from resnext_jax.train.files import append_line


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
