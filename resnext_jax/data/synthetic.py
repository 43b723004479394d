"""Synthetic batches for throughput runs: no files, no decoding, the input pipeline out of
the measurement. Same interface as :class:`TrainData` / :class:`EvalData`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class SyntheticData:
    """One fixed random batch (normal images, uniform labels), repeated."""

    def __init__(self, *, image_size: int, channels: int, num_classes: int, global_batch: int,
                 process_count: int, seed: int, num_examples: int = 1_281_167) -> None:
        local = global_batch // process_count
        rng = np.random.default_rng(seed)
        self.batch = {
            "image": rng.standard_normal((local, image_size, image_size, channels), np.float32),
            "label": rng.integers(0, num_classes, local).astype(np.int32),
            "mask": np.ones(local, np.float32)}
        self.num_classes, self.num_examples = num_classes, global_batch
        self.steps_per_epoch = max(1, num_examples // global_batch)

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        del start_step  # every batch is the same
        train = {k: v for k, v in self.batch.items() if k != "mask"}
        while True:
            yield train

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter([self.batch])
