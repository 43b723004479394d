"""Metrics to TensorBoard (clu) and a JSON-lines file, written by process 0 only."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from clu import metric_writers


class MetricWriter:
    """``write(step, {"train/loss": ...})`` appends to ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, workdir: str) -> None:
        self.main = jax.process_index() == 0
        if not self.main:
            return
        self.writer = metric_writers.create_default_writer(workdir, asynchronous=False)
        # Appended, flushed line by line: a crash or a full disk never loses earlier lines.
        self.file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.main:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        self.writer.write_scalars(step, scalars)
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.main:
            self.writer.close()
            self.file.close()
