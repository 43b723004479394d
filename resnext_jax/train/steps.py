"""The train state and the jitted train / eval steps (pure functions of state and batch),
with Mixup / CutMix of each device's rows inside the train step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec
from ml_collections import ConfigDict

from resnext_jax.ops import DATA_AXIS

_MIXING_STREAM = 0x6D6978  # folded into the step's key for Mixup / CutMix draws


@dataclasses.dataclass(frozen=True)
class Mixing:
    """Mixup and CutMix on the device, per batch, with timm's semantics (``timm.data.Mixup``,
    ``mode="batch"``, ``correct_lam=True``): see :func:`mix`."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def on(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @classmethod
    def from_config(cls, c: ConfigDict) -> Mixing:
        return cls(c.mixup_alpha, c.cutmix_alpha, c.prob, c.switch_prob)


def _partner(x: jax.Array) -> jax.Array:
    """Rows 0, 1, 2, 3, ... as 1, 0, 3, 2, ..."""
    return x.reshape(-1, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)


def mix(images: jax.Array, labels: jax.Array, rng: jax.Array, *, num_classes: int,
        smoothing: float, mixing: Mixing) -> tuple[jax.Array, jax.Array]:
    """``(images, targets)``: the batch mixed (or not, by the draw) and its soft targets.

    One draw per step decides whether the batch is mixed (``prob``), by CutMix or Mixup
    (``switch_prob`` when both are on), with ``lam ~ Beta(alpha, alpha)``; CutMix's ``lam`` is
    corrected to the pasted box's area. Targets are the label-smoothed one-hot vectors mixed
    by the same ``lam``, as timm's ``mixup_target``. Where timm mixes row ``i`` with row
    ``n-1-i``, here row ``2k`` is mixed with ``2k+1`` and back: pairs that never cross devices
    (each device's rows are a contiguous, even-sized slice), so the mixed batch is the same on
    any number of devices. Written here rather than taken from a library because it must run
    inside the jitted, sharded step, drawn from the step's key (exact resume); timm's runs on
    the host in PyTorch. ``rng`` must be the same on every device; ``images`` an even number
    of NHWC rows."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    if not mixing.on:
        return images, targets
    k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(rng, 6)
    apply = jax.random.uniform(k_apply) < mixing.prob
    if mixing.mixup_alpha > 0 and mixing.cutmix_alpha > 0:
        cutmix = jax.random.uniform(k_switch) < mixing.switch_prob
    else:
        cutmix = jnp.bool_(mixing.cutmix_alpha > 0)
    height, width = images.shape[1:3]
    # Both kinds are drawn and one is kept (shapes must not depend on the draw under jit);
    # an alpha of 0 becomes 1e-3 only so that the unused Beta draw stays finite.
    # CutMix: a box of area (1 - lam) of the image, centred anywhere, clipped at the edges
    # (timm's rand_bbox), and lam corrected to the area actually pasted.
    cut_lam = jax.random.beta(k_cutmix, max(mixing.cutmix_alpha, 1e-3),
                              max(mixing.cutmix_alpha, 1e-3))
    ratio = jnp.sqrt(1 - cut_lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    cy, cx = jax.random.randint(k_y, (), 0, height), jax.random.randint(k_x, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    box_lam = 1 - (y1 - y0) * (x1 - x0) / (height * width)
    mixup_lam = jax.random.beta(k_mixup, max(mixing.mixup_alpha, 1e-3),
                                max(mixing.mixup_alpha, 1e-3))
    lam = jnp.where(apply, jnp.where(cutmix, box_lam, mixup_lam), 1.0).astype(jnp.float32)
    other = _partner(images)
    mixed = jnp.where(cutmix & apply, jnp.where(box[None, :, :, None], other, images),
                      (lam * images + (1 - lam) * other).astype(images.dtype))
    return mixed, lam * targets + (1 - lam) * _partner(targets)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any  # {"params", "batch_stats"}: the moving average of both; {} when EMA is off


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                 image_shape: tuple[int, ...], ema: bool,
                 variables: dict | None = None) -> TrainState:
    """Fresh (or ``variables``-initialised) state; jit this with ``out_shardings`` so that it
    is created directly in its sharding."""
    if variables is None:
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params),
                      ema={"params": params, "batch_stats": batch_stats} if ema else {})


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The EMA decay after optimizer step ``step`` (1, 2, ...), as timm's ``ModelEmaV3``:
    the first update copies the weights; with ``warmup`` the decay then grows as
    ``1 - (1 + n) ** -2/3`` (n updates so far) up to ``decay``, so that the average of a
    short run is not dominated by its random initialisation."""
    n = (step - 1).astype(jnp.float32)
    rate = jnp.minimum(1 - (1 + n) ** (-2 / 3), decay) if warmup else jnp.float32(decay)
    return jnp.where(n > 0, rate, 0.0)


def _split_batch(model: nn.Module) -> nn.Module:
    """``model`` told that ``DATA_AXIS`` splits its batch (``ResNet.data_axis``); modules
    without the field (no BatchNorm, no grouped convolutions) as they are."""
    return model.clone(data_axis=DATA_AXIS) if hasattr(model, "data_axis") else model


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, num_classes: int, label_smoothing: float,
                    ema_decay: float, accum_steps: int, seed: int, mesh: Mesh,
                    ema_warmup: bool = False, mixing: Mixing | None = None,
                    train_from: str = "stem"
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """One optimizer step on a global batch split over ``mesh``'s ``data`` axis.

    Each device computes the loss and gradient of its own rows (a ``shard_map``), so
    grouped convolutions never see the global batch (XLA's partitioner would gather it for
    them, openxla/xla#47945) and BatchNorm averages its statistics over the axis. With
    ``accum_steps`` > 1 the rows are taken in sequential micro-batches whose gradients add
    up on the device; the gradient is averaged over devices once per step. ``ema_decay`` > 0
    keeps a moving average of the weights and the BatchNorm statistics (:func:`ema_decay_at`).
    ``mixing``: Mixup / CutMix of each device's rows before the micro-batches are taken
    (:func:`mix`). ``train_from``: the first part that trains
    (``ResNet.parts``); the parts before it keep BatchNorm in eval mode.
    """
    model, mixing = _split_batch(model), mixing or Mixing()
    frozen = {} if train_from == "stem" else {"train_from": train_from}  # any flax model

    def loss_fn(params, batch_stats, images, targets, labels, rng):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"],
                                      rngs={"dropout": rng}, **frozen)
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
        correct = (jnp.argmax(logits, -1) == labels).mean()
        return loss, (updates["batch_stats"], correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def per_device(params, batch_stats, images, labels, rng):
        # Device-varying parameters: their gradients stay this device's own until the pmean.
        params = jax.lax.pcast(params, DATA_AXIS, to="varying")
        images, targets = mix(images, labels, jax.random.fold_in(rng, _MIXING_STREAM),
                              num_classes=num_classes, smoothing=label_smoothing,
                              mixing=mixing)
        if accum_steps == 1:
            (loss, (batch_stats, acc)), grads = grad_fn(params, batch_stats, images, targets,
                                                        labels, rng)
        else:
            # Micro-batch j takes local rows j, j+k, j+2k, ...: the global rows j, j+k, ...
            # (each device's slice starts at a multiple of k), as on one device.
            def split(x):
                return x.reshape(x.shape[0] // accum_steps, accum_steps,
                                 *x.shape[1:]).swapaxes(0, 1)

            def micro(carry, xs):
                grads, batch_stats = carry
                (loss, (batch_stats, acc)), g = grad_fn(params, batch_stats, *xs)
                return (jax.tree_util.tree_map(jnp.add, grads, g), batch_stats), (loss, acc)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            rngs = jax.random.split(rng, accum_steps)
            (grads, batch_stats), (loss, acc) = jax.lax.scan(
                micro, (zeros, batch_stats),
                (split(images), split(targets), split(labels), rngs))
            grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grads)
            loss, acc = loss.mean(), acc.mean()
        return jax.lax.pmean((grads, loss, acc), DATA_AXIS) + (batch_stats,)

    batch, replicated = PartitionSpec(DATA_AXIS), PartitionSpec()
    per_device = jax.shard_map(per_device, mesh=mesh, out_specs=replicated,
                               in_specs=(replicated, replicated, batch, batch, replicated))

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        grads, loss, acc, batch_stats = per_device(state.params, state.batch_stats,
                                                   batch["image"], batch["label"], rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema_decay > 0:
            decay = ema_decay_at(state.step + 1, ema_decay, ema_warmup)
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema,
                                         {"params": params, "batch_stats": batch_stats})
        grad_norm = optax.tree.norm(grads)
        # The new state must be finite too (an update can overflow where the gradient did
        # not), so that a checkpoint saved after a finite step is a good one.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(
            optax.tree.norm(params)) & jnp.isfinite(optax.tree.norm(batch_stats))
        metrics = {"loss": loss, "top1": acc, "grad_norm": grad_norm,
                   "learning_rate": schedule(state.step), "finite": finite}
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema=ema)
        return new, metrics

    return step


def make_eval_step(model: nn.Module, *, num_classes: int, use_ema: bool,
                   mesh: Mesh) -> Callable[[TrainState, dict], dict]:
    """Sums over the (padded) global batch; ``mask`` 0 rows count for nothing. Each device
    evaluates its own rows (see :func:`make_train_step`) and the sums are added up.
    ``use_ema``: the moving average is evaluated too, alongside (``ema_loss``, ...)."""
    model = _split_batch(model)

    def sums(variables, images, labels, mask, prefix=""):
        logits = model.apply(variables, images, train=False).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
        return {f"{prefix}loss": jnp.sum(loss * mask),
                f"{prefix}top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                f"{prefix}top5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask)}

    def per_device(variables, ema, images, labels, mask):
        out = {**sums(variables, images, labels, mask), "count": jnp.sum(mask)}
        if use_ema:
            out |= sums(ema, images, labels, mask, "ema_")
        return jax.lax.psum(out, DATA_AXIS)

    batch, replicated = PartitionSpec(DATA_AXIS), PartitionSpec()
    per_device = jax.shard_map(per_device, mesh=mesh, out_specs=replicated,
                               in_specs=(replicated, replicated, batch, batch, batch))

    def step(state: TrainState, batch: dict) -> dict:
        return per_device({"params": state.params, "batch_stats": state.batch_stats},
                          state.ema, batch["image"], batch["label"], batch["mask"])

    return step
