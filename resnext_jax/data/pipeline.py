"""Per-process tf.data pipelines: endless training batches and exactly-once eval batches.

Training data is split into ``num_shards`` disjoint shards (``tfds.even_splits``); each process
reads its ``num_shards / process_count`` shards and a global batch is the concatenation of
``global_batch / num_shards`` examples from every shard in shard order. The global batch at a
step is therefore a function of (seed, num_shards, step) alone, not of how many processes or
devices read it, and a restart at step ``s`` rebuilds the stream from ``s``: the epoch is
``s // steps_per_epoch``, file order and shuffle come from (seed, shard, epoch), the examples
already seen in that epoch are skipped before decoding, and each example's augmentation
seed comes from (seed, shard, epoch, position).

Repeated augmentation (``repeats`` > 1, torchvision's ``--ra-reps`` after DeiT) keeps the epoch
length but reads ``1 / repeats`` of the examples: each batch holds ``repeats`` differently
augmented copies of ``batch / repeats`` images, copy ``r`` in rows ``[r k, (r + 1) k)``, so
that the images in any device's slice of the batch, and the pairs Mixup / CutMix makes of
neighbouring rows, are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from resnext_jax.data.preprocess import Preprocess
from resnext_jax.data.sources import Source

Batch = dict[str, np.ndarray]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0])


def _no_autograph(fn):
    """The preprocessing is graph code already; converting it took seconds per pipeline."""
    return tf.autograph.experimental.do_not_convert(fn)


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep their order: needed for exact resume
    return ds.with_options(options)


class TrainData:
    """Endless training batches for this process; ``iterate(start_step)`` resumes exactly."""

    def __init__(self, source: Source, split: str, preprocess: Preprocess, *,
                 global_batch: int, num_shards: int, process_index: int, process_count: int,
                 seed: int, shuffle_buffer: int = 16_384, cache: bool = False,
                 prefetch: int = 2, repeats: int = 1) -> None:
        if num_shards % process_count or global_batch % num_shards:
            raise ValueError(
                f"data.num_shards={num_shards} must be a multiple of the process count "
                f"({process_count}) and divide the global batch ({global_batch})")
        self.shard_batch = global_batch // num_shards
        if repeats < 1 or self.shard_batch % repeats or self.shard_batch == repeats:
            raise ValueError(
                f"data.repeats={repeats} must divide each shard's batch of {self.shard_batch} "
                "(batch_size / data.num_shards) into groups of two or more images")
        self.source, self.split, self.preprocess = source, split, preprocess
        self.num_shards, self.seed = num_shards, seed
        per_process = num_shards // process_count
        self.shards = range(process_index * per_process, (process_index + 1) * per_process)
        self.shuffle_buffer, self.cache, self.prefetch = shuffle_buffer, cache, prefetch
        self.repeats = repeats
        smallest = min(source.num_examples(split, s, num_shards) for s in range(num_shards))
        self.steps_per_epoch = smallest // self.shard_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"split {split!r} has only {smallest} examples per shard, fewer "
                             f"than one batch ({self.shard_batch}); lower batch_size or "
                             "data.num_shards")
        self._cached: dict[int, tf.data.Dataset] = {}

    def _shard_epoch(self, shard: int, epoch: int, skip: int) -> tf.data.Dataset:
        epoch_seed = _seed(self.seed, shard, epoch)
        if self.cache:  # encoded-bytes cache in memory (decoded per use), reshuffled every epoch
            if shard not in self._cached:
                self._cached[shard] = self.source.read(self.split, shard, self.num_shards).cache()
            n = self.source.num_examples(self.split, shard, self.num_shards)
            ds = self._cached[shard].shuffle(n, seed=epoch_seed)
        else:
            ds = self.source.read(self.split, shard, self.num_shards, shuffle_seed=epoch_seed)
            ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed)
        ds = ds.take(self.steps_per_epoch * self.shard_batch // self.repeats)
        if self.repeats > 1:  # each group of batch / repeats images, `repeats` times in a row
            ds = ds.batch(self.shard_batch // self.repeats, drop_remainder=True).flat_map(
                lambda group: tf.data.Dataset.from_tensors(group).repeat(self.repeats).unbatch())
        ds = ds.enumerate()  # the position gives each copy its own augmentation seed
        ds = ds.skip(skip * self.shard_batch)  # before decoding: resuming costs reads only
        seed = tf.cast(epoch_seed, tf.int64)
        ds = ds.map(_no_autograph(lambda i, e: self.preprocess.train(e, tf.stack([seed, i]))),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(self.shard_batch, drop_remainder=True)

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Batches for global steps ``start_step, start_step + 1, ...`` (this process's part)."""
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while True:
            parts = [self._shard_epoch(s, epoch, skip) for s in self.shards]
            ds = tf.data.Dataset.zip(tuple(parts)).map(
                lambda *b: {k: tf.concat([p[k] for p in b], 0) for k in b[0]})
            yield from _options(ds.prefetch(self.prefetch)).as_numpy_iterator()
            epoch, skip = epoch + 1, 0


class EvalData:
    """Every example of ``split`` exactly once across processes, in equal-length batches;
    the last ones are padded and carry ``mask`` 0 on the padding."""

    def __init__(self, source: Source, split: str, preprocess: Preprocess, *,
                 global_batch: int, process_index: int, process_count: int,
                 cache: bool = False) -> None:
        if global_batch % process_count:
            raise ValueError(f"eval batch {global_batch} is not divisible by the process "
                             f"count {process_count}")
        self.source, self.split, self.preprocess = source, split, preprocess
        self.local_batch = global_batch // process_count
        self.index, self.count, self.cache = process_index, process_count, cache
        sizes = [source.num_examples(split, p, process_count) for p in range(process_count)]
        self.num_examples = sum(sizes)
        self.steps = max(1, math.ceil(max(sizes) / self.local_batch))
        self._ds: tf.data.Dataset | None = None

    def _dataset(self) -> tf.data.Dataset:
        ds = self.source.read(self.split, self.index, self.count)
        ds = ds.map(_no_autograph(lambda e: {**self.preprocess.eval(e), "mask": tf.constant(1.0)}),
                    num_parallel_calls=tf.data.AUTOTUNE)
        if self.cache:
            ds = ds.cache()
        pad = tf.data.Dataset.from_tensors(
            tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec))
        ds = ds.concatenate(pad.repeat()).take(self.steps * self.local_batch)
        return _options(ds.batch(self.local_batch).prefetch(2))

    def __iter__(self) -> Iterator[Batch]:
        if self._ds is None:
            self._ds = self._dataset()
        return self._ds.as_numpy_iterator()
