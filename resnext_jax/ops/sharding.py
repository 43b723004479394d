"""Grouped convolutions on each device's own rows when the batch is split over a mesh axis.

XLA's SPMD partitioner does not split a convolution with ``feature_group_count > 1`` along
the batch: it all-gathers the global batch onto every device, convolves all of it there
and slices its own rows back out, forward and in both gradients (openxla/xla#47945; the
fix, openxla/xla#48086, is not merged). Every other layer of these models partitions
well. So a model told which mesh axis splits its batch (``ResNet.data_axis``) runs each
grouped convolution in a ``jax.shard_map`` over that axis: each device convolves its own
rows against the replicated kernel, and the kernel's gradient is a local partial sum that
the ``shard_map`` sums over the axis (part of the gradient all-reduce that data
parallelism does anyway).

Two contexts, told apart by the trace's abstract mesh:

- inside a ``shard_map`` that is manual over the axis (the trainer's steps), arrays already
  hold one device's rows: convolutions need nothing, BatchNorm averages its statistics over
  the axis (:func:`manual`);
- in a ``jax.jit`` under ``jax.set_mesh(mesh)`` where the axis is not manual (a backbone in
  a user's own sharded program), grouped convolutions are wrapped (:func:`per_device_conv`).
  With explicit sharding (``jax.make_mesh``'s default axis type) the input's type names the
  axes that split the batch, and ``data_axis`` may be left out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
from jax import lax
from jax.sharding import PartitionSpec

AxisName = str | tuple[str, ...]
DATA_AXIS = "data"  # the mesh axis that splits every batch (trainer, ParallelApply)


def _axes(axis: AxisName) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def manual(axis: AxisName | None) -> bool:
    """Whether the trace is inside a ``shard_map`` that is manual over every axis of ``axis``,
    so arrays hold one device's rows of the batch."""
    mesh = jax.sharding.get_abstract_mesh()
    return axis is not None and not mesh.empty and set(_axes(axis)) <= set(mesh.manual_axes)


def _explicit_batch_axes(x: jax.Array) -> tuple[str, ...] | None:
    """The mesh axes that split ``x``'s batch when its type says so (explicit sharding,
    e.g. meshes from ``jax.make_mesh``), else None."""
    spec = getattr(jax.typeof(x).sharding, "spec", None)
    return _axes(spec[0]) if spec and spec[0] is not None else None


def per_device_conv(conv: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array,
                    kernel: jax.Array, axis: AxisName | None) -> jax.Array:
    """``conv(x, kernel)`` on each device's rows of ``x`` when the context mesh
    (``jax.set_mesh``) splits the batch over ``axis``; plain ``conv(x, kernel)`` otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return conv(x, kernel)
    axis = axis or _explicit_batch_axes(x)
    if axis is None:
        if not mesh.manual_axes:
            warnings.warn(
                "a grouped convolution is traced under a multi-device mesh without data_axis: "
                "if the batch is sharded, XLA gathers the whole batch onto every device for it "
                "(openxla/xla#47945). Create the model with data_axis=<the mesh axis that "
                "splits the batch>.", stacklevel=2)
        return conv(x, kernel)
    missing = [a for a in _axes(axis) if a not in mesh.axis_names]
    if missing:
        raise ValueError(f"data_axis={axis!r}: the context mesh has no axis {missing[0]!r} "
                         f"(its axes: {mesh.axis_names})")
    axes = tuple(a for a in _axes(axis) if a not in mesh.manual_axes)  # manual: local already
    devices = 1
    for a in axes:
        devices *= mesh.shape[a]
    if devices == 1:
        return conv(x, kernel)
    if x.shape[0] % devices:
        raise ValueError(f"a batch of {x.shape[0]} cannot be split evenly over the {devices} "
                         f"devices of mesh axis {axis!r}; use a multiple of {devices}")

    def local(x: jax.Array, kernel: jax.Array) -> jax.Array:
        # A device-varying kernel makes its gradient this device's partial sum, which the
        # shard_map's transpose then sums over the axes.
        return conv(x, lax.pcast(kernel, axes, to="varying"))

    spec = PartitionSpec(axes if len(axes) > 1 else axes[0])
    return jax.shard_map(local, in_specs=(spec, PartitionSpec()), out_specs=spec,
                         axis_names=set(axes))(x, kernel)
