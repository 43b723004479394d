"""Learning-rate schedules and optimizers (optax) from the ``optimizer`` config block."""

from __future__ import annotations

from typing import Any

import jax
import optax
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "adamw", "lamb")
SCHEDULES = ("cosine", "step", "constant")


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


def frozen_labels(params: Any, parts: tuple[str, ...], train_from: str) -> Any:
    """``"frozen"`` for the parameters of the parts before ``train_from`` (``ResNet.parts``;
    a parameter's first path component is ``stem``, ``layerS_I`` or ``fc``), else
    ``"train"``."""
    first = parts.index(train_from)

    def label(path: tuple, _: Any) -> str:
        part = path[0].key.split("_")[0]
        return "frozen" if parts.index(part) < first else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(opt: ConfigDict, schedule: optax.Schedule,
                     frozen: Any = None) -> optax.GradientTransformation:
    """SGD (momentum, optional Nesterov; decay added to the gradient as in PyTorch), AdamW
    or LAMB (decoupled decay), all with the decay mask above and optional global-norm clip.
    ``frozen``: labels from :func:`frozen_labels`; those parameters never change (no update,
    no weight decay, no optimizer state)."""
    tx = _optimizer(opt, schedule)
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
    else:
        tx = optax.lamb(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                        mask=decay_mask)
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    return tx
