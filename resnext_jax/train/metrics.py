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
        self.writer = metric_writers.create_default_writer(
            workdir, just_logging=not self.main, asynchronous=False)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.file = open(self.path, "a", encoding="utf-8") if self.main else None  # noqa: SIM115

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        self.writer.write_scalars(step, scalars)
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **scalars}) + "\n")
            self.file.flush()

    def close(self) -> None:
        self.writer.close()
        if self.file is not None:
            self.file.close()
