"""A model applied to batches split over several devices (inference, feature extraction).

Each device runs the model on its own rows: the model is told which mesh axis splits the
batch (``ResNet.data_axis``), so its grouped convolutions do not gather the global batch
(see :mod:`resnext_jax.ops.sharding`). Training has its own per-device steps
(:mod:`resnext_jax.train.steps`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnext_jax.ops import DATA_AXIS, compiler_options


class ParallelApply:
    """``model.apply(variables, images, **apply_kwargs)`` jitted for inference with the batch
    split over ``devices`` (default: this process's).

    Every output must have the batch as its first axis, and the batch size must be a
    multiple of ``self.devices``. ``variables`` are copied to the devices once and kept for
    as long as the same object is passed. ``lower`` gives the compiled program to inspect
    (e.g. with :func:`resnext_jax.hlo.per_device`).
    """

    def __init__(self, model: Any, devices: Sequence[jax.Device] | None = None,
                 **apply_kwargs: Any) -> None:
        devices = list(devices or jax.local_devices())
        self.devices, self.mesh = len(devices), Mesh(np.array(devices), (DATA_AXIS,))
        self.platform = devices[0].platform  # "auto" lowering / dtype resolve for it
        self._rows = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        split = model.clone(data_axis=DATA_AXIS)
        self._jitted = jax.jit(functools.partial(split.apply, **apply_kwargs),
                               in_shardings=(self._replicated, self._rows),
                               out_shardings=self._rows,
                               compiler_options=compiler_options(backend=self.platform))
        self._placed: tuple[Any, Any] | None = None  # (the caller's variables, on the mesh)

    def _check(self, images: Any) -> None:
        if len(images) % self.devices:
            raise ValueError(f"a batch of {len(images)} cannot be split evenly over "
                             f"{self.devices} devices; use a multiple of {self.devices}")

    def __call__(self, variables: Any, images: Any) -> Any:
        self._check(images)
        if self._placed is None or self._placed[0] is not variables:
            self._placed = (variables, jax.device_put(variables, self._replicated))
        with jax.set_mesh(self.mesh):
            return self._jitted(self._placed[1], jax.device_put(images, self._rows))

    def lower(self, variables: Any, images: Any) -> jax.stages.Lowered:
        self._check(images)
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(variables, images)

