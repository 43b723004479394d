"""Mixup and CutMix on the device, per batch, with timm's semantics (``timm.data.Mixup``,
``mode="batch"``, ``correct_lam=True``).

One draw per step decides whether the batch is mixed (``prob``), by CutMix or Mixup
(``switch_prob`` when both are on), with ``lam ~ Beta(alpha, alpha)``; CutMix's ``lam`` is
corrected to the pasted box's area. Targets are the label-smoothed one-hot vectors mixed by
the same ``lam``, as timm's ``mixup_target``. Where timm mixes row ``i`` with row ``n-1-i``,
here row ``2k`` is mixed with ``2k+1`` and back: pairs that never cross devices (each device's
rows are a contiguous, even-sized slice), so the mixed batch is the same on any number of
devices. Written here rather than taken from a library because it must run inside the jitted,
sharded step, drawn from the step's key (exact resume); timm's runs on the host in PyTorch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


@dataclasses.dataclass(frozen=True)
class Mixing:
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

    ``rng`` must be the same on every device; ``images`` an even number of NHWC rows."""
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
