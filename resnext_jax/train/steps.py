"""The train state and the jitted train / eval steps (pure functions of state and batch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # {} when EMA is off


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                 image_shape: tuple[int, ...], ema: bool,
                 variables: dict | None = None) -> TrainState:
    """Fresh (or ``variables``-initialised) state; jit this with ``out_shardings`` so that it
    is created directly in its sharding."""
    if variables is None:
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      ema_params=params if ema else {})


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  smoothing: float) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, num_classes: int, label_smoothing: float,
                    ema_decay: float, accum_steps: int, seed: int,
                    batch_spec: Any) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """One optimizer step on a global batch, in ``accum_steps`` sequential micro-batches
    (gradients averaged; BatchNorm statistics updated after each micro-batch)."""

    def loss_fn(params, batch_stats, images, labels, rng):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"],
                                      rngs={"dropout": rng})
        loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
        correct = (jnp.argmax(logits, -1) == labels).mean()
        return loss, (updates["batch_stats"], correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        images, labels = batch["image"], batch["label"]
        if accum_steps == 1:
            (loss, (batch_stats, acc)), grads = grad_fn(state.params, state.batch_stats,
                                                        images, labels, rng)
        else:
            # Micro-batch j takes rows j, j+k, j+2k, ... so each one stays spread evenly
            # over the devices' contiguous slices of the batch.
            def split(x):
                x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, batch_spec(x.ndim))

            def micro(carry, xs):
                grads, batch_stats, loss, acc = carry
                images, labels, rng = xs
                (micro_loss, (batch_stats, a)), g = grad_fn(state.params, batch_stats, images,
                                                            labels, rng)
                grads = jax.tree_util.tree_map(jnp.add, grads, g)
                return (grads, batch_stats, loss + micro_loss, acc + a), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            rngs = jax.random.split(rng, accum_steps)
            init = (zeros, state.batch_stats, jnp.zeros(()), jnp.zeros(()))
            (grads, batch_stats, loss, acc), _ = jax.lax.scan(
                micro, init, (split(images), split(labels), rngs))
            grads, loss, acc = jax.tree_util.tree_map(lambda g: g / accum_steps,
                                                      (grads, loss, acc))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema_decay > 0:
            ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                         ema, params)
        grad_norm = optax.tree.norm(grads)
        metrics = {"loss": loss, "top1": acc, "grad_norm": grad_norm,
                   "learning_rate": schedule(state.step),
                   "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema)
        return new, metrics

    return step


def make_eval_step(model: nn.Module, *, num_classes: int,
                   use_ema: bool) -> Callable[[TrainState, dict], dict]:
    """Sums over the (padded) global batch; ``mask`` 0 rows count for nothing."""

    def step(state: TrainState, batch: dict) -> dict:
        params = state.ema_params if use_ema else state.params
        logits = model.apply({"params": params, "batch_stats": state.batch_stats},
                             batch["image"], train=False).astype(jnp.float32)
        labels, mask = batch["label"], batch["mask"]
        loss = cross_entropy(logits, labels, num_classes, 0.0)
        top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
        return {"loss": jnp.sum(loss * mask),
                "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                "top5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
                "count": jnp.sum(mask)}

    return step
