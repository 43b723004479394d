"""Learning-rate schedules and optimizers (optax) from the ``optimizer`` config block."""

from __future__ import annotations

from typing import Any

import jax
import optax
from ml_collections import ConfigDict

from resnext_jax.train.config import OPTIMIZERS, SCHEDULES


def peak_learning_rate(opt: ConfigDict, global_batch: int) -> float:
    """``base_lr`` is per 256 images (Goyal et al.): scaled linearly with the global batch."""
    return opt.base_lr * (global_batch / 256 if opt.scale_by_batch else 1.0)


def create_schedule(opt: ConfigDict, global_batch: int, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine to 0, step decay at ``decay_epochs``, or constant."""
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={opt.schedule!r}; choose one of {SCHEDULES}")
    peak = peak_learning_rate(opt, global_batch)
    warmup = min(int(opt.warmup_epochs * steps_per_epoch), total_steps)
    rest = max(total_steps - warmup, 1)
    if opt.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest)
    elif opt.schedule == "step":
        after = optax.piecewise_constant_schedule(
            peak, {int(e * steps_per_epoch) - warmup: opt.decay_factor for e in opt.decay_epochs})
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for conv / dense kernels; BatchNorm scales and biases get no weight decay."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: path[-1].key == "kernel" and p.ndim > 1, params)


def _part(path: tuple) -> str:
    """A parameter's part of ``ResNet.parts``: its first path component is ``stem``,
    ``layerS_I`` or ``fc``."""
    return path[0].key.split("_")[0]


def frozen_labels(params: Any, parts: tuple[str, ...], train_from: str) -> Any:
    """``"frozen"`` for the parameters of the parts before ``train_from``, else ``"train"``."""
    first = parts.index(train_from)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if parts.index(_part(path)) < first else "train", params)


def lr_multipliers(params: Any, parts: tuple[str, ...], multipliers: dict[str, float]) -> Any:
    """Each parameter's learning-rate multiplier from ``{part: multiplier}`` (parts not named:
    1), or None when all are 1. A multiplier other than 1 for a part the model does not have
    is an error."""
    unknown = sorted(k for k, v in multipliers.items() if v != 1 and k not in parts)
    if unknown:
        raise ValueError(f"optimizer.lr_multipliers names {unknown}, which this model does "
                         f"not have; its parts are {list(parts)}")
    if all(v == 1 for v in multipliers.values()):
        return None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(multipliers.get(_part(path), 1.0)), params)


def create_optimizer(opt: ConfigDict, schedule: optax.Schedule, frozen: Any = None,
                     multipliers: Any = None) -> optax.GradientTransformation:
    """SGD (momentum, optional Nesterov; decay added to the gradient as in PyTorch), AdamW,
    LAMB (decoupled decay) or LARS (decay and trust ratio skip BatchNorm and biases), all with
    the decay mask above and optional global-norm clip.

    ``frozen``: labels from :func:`frozen_labels`; those parameters never change (no update,
    no weight decay, no optimizer state). ``multipliers``: from :func:`lr_multipliers`; each
    parameter's update (weight decay included) is scaled, as a per-group learning rate."""
    tx = _optimizer(opt, schedule)
    if multipliers is not None:
        labels = jax.tree_util.tree_map(str, multipliers)
        scales = {label: optax.scale(float(label))
                  for label in set(jax.tree_util.tree_leaves(labels))}
        tx = optax.chain(tx, optax.multi_transform(scales, labels))
    if frozen is None:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, frozen)


def _optimizer(opt: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={opt.name!r}; choose one of {OPTIMIZERS}")
    if opt.name == "sgd":
        tx = optax.chain(optax.add_decayed_weights(opt.weight_decay, decay_mask),
                         optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
    elif opt.name == "adamw":
        tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                         mask=decay_mask)
    elif opt.name == "lamb":
        tx = optax.lamb(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                        mask=decay_mask)
    else:
        tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=decay_mask,
                        trust_coefficient=opt.trust_coefficient, trust_ratio_mask=decay_mask,
                        momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx
