"""The parts of a run that never touch data: the mesh, the model, the optimizer, the state's
shapes and the jitted steps. The trainer runs them; ``--mode=compile``
(:mod:`resnext_jax.train.aot`) compiles the same programs for a TPU slice it does not have.
No TensorFlow here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from resnext_jax.errors import UsageError
from resnext_jax.model import ResNet
from resnext_jax.ops import compiler_options
from resnext_jax.train.config import check_config
from resnext_jax.train.optim import (
    create_optimizer,
    create_schedule,
    frozen_labels,
    lr_multipliers,
)
from resnext_jax.train.steps import (
    DATA_AXIS,
    Mixing,
    TrainState,
    create_state,
    make_eval_step,
    make_train_step,
)
from resnext_jax.weights import Pretrained, load
from resnext_jax.zoo import create_model

# ResNet fields a config may set under config.model (None keeps the zoo entry's value).
RUN_FIELDS = ("drop_rate", "drop_path_rate", "lowering", "remat")


@dataclasses.dataclass(frozen=True)
class Steps:
    """A run's programs for one mesh. ``init(rng)`` creates the state in its sharding;
    ``train_step(state, batch)`` and ``eval_step(state, batch)`` take global batches."""

    abstract_state: TrainState  # shapes, dtypes and shardings; nothing allocated
    batch_sharding: NamedSharding
    init: Callable[[jax.Array], TrainState]
    train_step: Any  # jax.jit-wrapped; .lower(...) for ahead-of-time compilation
    eval_step: Any


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: every device of every process)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def model_from_config(config: ConfigDict, num_classes: int, *, weights: bool = True
                      ) -> tuple[ResNet, Pretrained | None]:
    """``config.model``'s zoo model for ``num_classes`` classes, with the ResNet fields the
    config sets; loaded with its weights when ``model.pretrained`` names some and
    ``weights``."""
    m = config.model
    if not m.name and not (m.pretrained and weights):
        raise UsageError("config.model.name is empty: name a zoo model (resnext_jax."
                         "list_models())" + (", or set model.pretrained to weights that name "
                                             "theirs" if weights else ""))
    if m.num_classes is not None and m.num_classes != num_classes:
        raise UsageError(f"config.model.num_classes={m.num_classes}, but the data has "
                         f"{num_classes} classes; leave model.num_classes unset to use the "
                         "data's")
    overrides = {k: m[k] for k in RUN_FIELDS if m[k] is not None}
    # "auto" stays: the model resolves it for the devices it is compiled for.
    overrides["dtype"] = m.dtype if m.dtype == "auto" else jnp.dtype(m.dtype)
    if m.pretrained and weights:
        loaded = load(m.pretrained, m.name or None, num_classes=num_classes, **overrides)
        return loaded.model, loaded
    return create_model(m.name, num_classes=num_classes, **overrides), None


def check_divisible(key: str, batch: int, devices: int, micro_batches: int = 1) -> None:
    """Every device gets the same rows, in ``micro_batches`` equal parts."""
    unit = devices * micro_batches
    if batch <= 0 or batch % unit:
        parts = f"the {devices} devices" + (f" x {micro_batches} grad_accum_steps"
                                            if micro_batches > 1 else "")
        what = f"is not divisible by {parts}" if batch > 0 else "must be positive"
        raise UsageError(f"{key}={batch} {what}; use a multiple of {unit}, e.g. "
                         f"--config.{key}={max(unit, batch // unit * unit)}")


def check_run_config(config: ConfigDict, devices: int) -> None:
    """Every knob the config sets applies to its run, and the train and eval batches split
    evenly over ``devices`` (and micro-batches)."""
    check_config(config)
    check_divisible("batch_size", config.batch_size, devices, config.grad_accum_steps)
    check_divisible("eval_batch_size", config.eval_batch_size, devices)


def build_steps(config: ConfigDict, model: ResNet, mesh: Mesh, *, num_classes: int,
                steps_per_epoch: int, total_steps: int,
                variables: dict | None = None) -> Steps:
    """The optimizer, schedule, state shapes and jitted train / eval steps of ``config`` for
    ``model`` on ``mesh``; ``variables`` initialise the state (pretrained weights). The
    callers check the config first (:func:`check_run_config`)."""
    schedule = create_schedule(config.optimizer, config.batch_size, steps_per_epoch,
                               total_steps)
    d = config.data
    image_shape = (d.image_size, d.image_size, d.channels)
    params = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape))))["params"]
    train_from = config.model.train_from
    if train_from not in model.parts:
        raise UsageError(f"model.train_from={train_from!r} is not a part of this model: use "
                         f"one of {', '.join(model.parts)}")
    frozen = None if train_from == "stem" else frozen_labels(params, model.parts, train_from)
    try:
        multipliers = lr_multipliers(params, model.parts, dict(config.optimizer.lr_multipliers))
    except ValueError as e:
        raise UsageError(str(e)) from None
    tx = create_optimizer(config.optimizer, schedule, frozen, multipliers)
    mixing = Mixing.from_config(config.mixing)
    rows = config.batch_size // mesh.size
    if mixing.on and rows % 2:
        raise UsageError(
            f"Mixup / CutMix pair the rows of each device, so each device needs an even "
            f"number: batch_size={config.batch_size} over {mesh.size} device(s) gives {rows}; "
            f"use a multiple of {2 * mesh.size}")

    def init(rng):
        return create_state(model, tx, rng, image_shape, config.ema_decay > 0, variables)

    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, abstract)
    abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        state_sharding)
    options = compiler_options(backend=mesh.devices.flat[0].platform)
    train_step = jax.jit(
        make_train_step(model, tx, schedule, num_classes=num_classes,
                        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay,
                        ema_warmup=config.ema_warmup, accum_steps=config.grad_accum_steps,
                        seed=config.seed, mesh=mesh, mixing=mixing, train_from=train_from),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated), donate_argnums=0,
        compiler_options=options)
    eval_step = jax.jit(
        make_eval_step(model, num_classes=num_classes, use_ema=config.ema_decay > 0,
                       mesh=mesh),
        in_shardings=(state_sharding, batch_sharding), out_shardings=replicated,
        compiler_options=options)
    return Steps(abstract_state=abstract_state, batch_sharding=batch_sharding,
                 init=jax.jit(init, out_shardings=state_sharding), train_step=train_step,
                 eval_step=eval_step)


def abstract_batch(config: ConfigDict, steps: Steps, *, train: bool) -> dict[str, Any]:
    """The shapes, dtypes and sharding of one global batch as the input pipeline makes it
    (``resnext_jax.data``: float32 images, int32 labels, a float32 eval mask)."""
    d = config.data
    n = config.batch_size if train else config.eval_batch_size
    size = d.image_size if train else (d.eval_size or d.image_size)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=steps.batch_sharding)

    batch = {"image": spec((n, size, size, d.channels), jnp.float32),
             "label": spec((n,), jnp.int32)}
    return batch if train else {**batch, "mask": spec((n,), jnp.float32)}
