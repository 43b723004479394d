"""Every recipe config trains a few steps and evaluates, on mocked ImageNet / CIFAR-10.

The recipe is the config's: input pipeline (crop sizes, policy, erasing, repeats), Mixup /
CutMix, label smoothing, optimizer, schedule and EMA; only the network is swapped for a tiny
one of the same kind and the batch made small, so that all of them run on a CI CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from mock_tfds import mock_tfds

from resnext_jax import train

pytestmark = pytest.mark.e2e  # about 30 s each (compilation): see pyproject.toml

RECIPES = ["resnext50_32x4d", "seresnext50_32x4d", "seresnext50_32x4d_tpu_pod",
           "resnext29_8x64d_cifar10", "resnext50_32x4d_tv2", "resnext101_32x8d_tv2",
           "seresnext50_32x4d_racm"]


def test_every_training_recipe_is_listed_here():
    others = {"digits", "finetune", "synthetic"}  # tested end to end elsewhere
    assert set(train.list_configs()) - others == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_and_evaluates_a_few_steps(name, tmp_path):
    config = train.get_config(name)
    recipe = config.copy_and_resolve_references()
    cifar = config.data.name == "cifar10"
    tiny = "tiny_resnext_cifar" if cifar else (
        "tiny_seresnext" if "seresnext" in config.model.name else "tiny_resnext")
    config.model.name = tiny
    config.model.dtype = "float32"  # bf16 recipes are for accelerators
    config.batch_size = config.eval_batch_size = 8
    config.num_train_steps, config.log_every_steps = 3, 1
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.shuffle_buffer = 16
    config.checkpoint.async_save = False
    splits = {"train": 64, config.data.eval_split: 8}
    with mock_tfds(config.data.data_dir, config.data.name, splits,
                   sizes=(32, 32) if cifar else (200, 300)):
        trainer = train.build(config, str(tmp_path / "run"))
        # The recipe's pipeline is what runs.
        prep = trainer.train_data.preprocess
        assert prep.image_size == recipe.data.image_size
        assert prep.auto_augment == recipe.data.auto_augment
        assert (prep.erase_prob, prep.erase_count, prep.erase_mode) == (
            recipe.data.random_erase, recipe.data.random_erase_count,
            recipe.data.random_erase_mode)
        assert trainer.train_data.repeats == recipe.data.repeats
        assert trainer.transform.size == (recipe.data.eval_size or recipe.data.image_size)
        trainer.close()
        result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert all(np.isfinite(v) for v in result.values())
    assert ("eval/ema_top1" in result) == (recipe.ema_decay > 0)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
