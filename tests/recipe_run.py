"""Runs a recipe config for a few training steps on mocked ImageNet / CIFAR-10, for
tests/test_recipes_*.py (two files, so that parallel test workers share them).

The recipe is the config's: input pipeline (crop sizes, policy, erasing, repeats), Mixup /
CutMix, label smoothing, optimizer, schedule and EMA; only the network is swapped for a tiny
one of the same kind and the batch made small, so that all of them run on a CI CPU.
"""

from __future__ import annotations

import jax
import numpy as np
from mock_tfds import mock_tfds

from resnext_jax import train

PAPERS = ["resnext50_32x4d", "seresnext50_32x4d", "seresnext50_32x4d_tpu_pod",
          "resnext29_8x64d_cifar10"]
MODERN = ["resnext50_32x4d_tv2", "resnext101_32x8d_tv2", "seresnext50_32x4d_racm"]


def run_recipe(name: str, tmp_path, steps: int = 2) -> None:
    config = train.get_config(name)
    recipe = config.copy_and_resolve_references()
    cifar = config.data.name == "cifar10"
    config.model.name = "tiny_resnext_cifar" if cifar else (
        "tiny_seresnext" if "seresnext" in config.model.name else "tiny_resnext")
    config.model.dtype = "float32"  # bf16 recipes are for accelerators
    config.batch_size = config.eval_batch_size = 8
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.shuffle_buffer = 16
    splits = {"train": 64, config.data.eval_split: 8}
    with mock_tfds(config.data.data_dir, config.data.name, splits,
                   sizes=(32, 32) if cifar else (200, 300)):
        run = train.create_run(config, str(tmp_path / "run"))
        try:
            prep = run.train_data.preprocess  # the recipe's pipeline is what runs
            assert prep.image_size == recipe.data.image_size
            assert prep.auto_augment == recipe.data.auto_augment
            assert (prep.erase_prob, prep.erase_count, prep.erase_mode) == (
                recipe.data.random_erase, recipe.data.random_erase_count,
                recipe.data.random_erase_mode)
            assert run.train_data.repeats == recipe.data.repeats
            assert run.transform.size == (recipe.data.eval_size or recipe.data.image_size)
            state, batches = run.fresh_state(), run.train_data.iterate(0)
            assert bool(state.ema) == (recipe.ema_decay > 0)
            for _ in range(steps):
                batch = next(batches)
                assert batch["image"].shape == (8, prep.image_size, prep.image_size, 3)
                state, metrics = run.steps.train_step(state, train.shard_batch(run, batch))
                assert np.isfinite(float(metrics["loss"]))
            assert int(jax.device_get(state.step)) == steps
        finally:
            run.close()
