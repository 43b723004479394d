"""Mixup / CutMix on the device (resnext_jax.train.steps): timm's batch-mode semantics, and
the same mixed batch whatever the number of devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnext_jax.train.steps import Mixing, mix

IMAGES = jax.random.normal(jax.random.key(0), (8, 12, 16, 3))
LABELS = jnp.array([0, 1, 2, 3, 4, 0, 1, 2])
PARTNER = np.array([1, 0, 3, 2, 5, 4, 7, 6])


def _mix(mixing: Mixing, seed: int = 0, smoothing: float = 0.0):
    return mix(IMAGES, LABELS, jax.random.key(seed), num_classes=5, smoothing=smoothing,
               mixing=mixing)


def test_off_gives_the_smoothed_one_hot_targets():
    for mixing in (Mixing(), Mixing(mixup_alpha=0.8, prob=0.0)):
        images, targets = _mix(mixing, smoothing=0.1)
        np.testing.assert_array_equal(images, IMAGES)
        np.testing.assert_allclose(targets, 0.02 + 0.9 * jax.nn.one_hot(LABELS, 5), rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_mixup_blends_each_row_with_its_pair_by_one_lam(seed):
    images, targets = _mix(Mixing(mixup_alpha=0.8), seed)
    lam = float(targets[0, 0])  # row 0 is class 0, its pair class 1
    assert 0 <= lam <= 1
    np.testing.assert_allclose(images, lam * IMAGES + (1 - lam) * IMAGES[PARTNER], atol=1e-6)
    one_hot = jax.nn.one_hot(LABELS, 5)
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[PARTNER],
                               atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_pastes_one_box_and_weighs_the_labels_by_its_area(seed):
    images, targets = _mix(Mixing(cutmix_alpha=1.0), seed)
    pasted = np.all(np.asarray(images) == np.asarray(IMAGES[PARTNER]), axis=-1)
    kept = np.all(np.asarray(images) == np.asarray(IMAGES), axis=-1)
    assert np.all(pasted | kept)
    box = pasted[0]
    assert np.all(pasted == box)  # the same box in every row
    if box.any():  # a rectangle
        rows, cols = np.nonzero(box)
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    lam = 1 - box.mean()
    one_hot = jax.nn.one_hot(LABELS, 5)
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[PARTNER],
                               atol=1e-6)


def test_both_switch_between_mixup_and_cutmix():
    kinds = set()
    for seed in range(16):
        images, _ = _mix(Mixing(mixup_alpha=0.8, cutmix_alpha=1.0), seed)
        exact = np.all(np.asarray(images) == np.asarray(IMAGES), axis=-1)
        kinds.add("cutmix" if exact.any() else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_the_same_rows_whatever_the_device_split():
    """Each device mixes its own contiguous rows with the step's key: pairs never cross."""
    mixing, key = Mixing(mixup_alpha=0.8, cutmix_alpha=1.0), jax.random.key(3)
    whole = mix(IMAGES, LABELS, key, num_classes=5, smoothing=0.1, mixing=mixing)
    for devices in (2, 4):
        parts = [mix(i, label, key, num_classes=5, smoothing=0.1, mixing=mixing)
                 for i, label in zip(jnp.split(IMAGES, devices), jnp.split(LABELS, devices),
                                     strict=True)]
        for k in range(2):
            np.testing.assert_allclose(jnp.concatenate([p[k] for p in parts]), whole[k],
                                       atol=1e-6)
